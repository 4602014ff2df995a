"""Arrow in, Arrow out: feed plans, the batch scorer, and the Beam DoFn and transforms."""
