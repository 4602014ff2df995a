"""Variables out of checkpoints: reading, the DumpVariables transforms, dump files."""
