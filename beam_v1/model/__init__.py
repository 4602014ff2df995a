"""Everything about one SavedModel: metadata, kernels, rewrites, audit, session. No Beam."""
