"""Files: Beam filesystems, model staging, Parquet and TFRecord reading and writing."""
