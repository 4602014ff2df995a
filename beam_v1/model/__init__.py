"""Everything about one SavedModel, no Beam: `prepared.prepare` reads and checks it once
(metadata, kernels, rewrites, audit, files_check), `session.V1Model` runs it, `inspect`
describes it, `examples` reads its tf.Example specs; `options.LoadOptions` says how."""
