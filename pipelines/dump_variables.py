"""Dump the variables of TF1 SavedModels (a fleet) on any Beam runner.

    python -m pipelines.dump_variables MODEL [MODEL ...] --output PREFIX \
        [--format parquet|npz] [--parts] [--slice-mb 64] \
        [--runner DataflowRunner --setup_file ./setup.py ...]

The same flags as `beam-v1 dump-variables`; flags it does not know go to Beam's
PipelineOptions (a flag neither knows: exit status 2). Exit status 1 if a model could not be
dumped (listed in PREFIX-failed.jsonl).
"""

from __future__ import annotations

import sys

from beam_v1.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["dump-variables", *sys.argv[1:]], hard_stop=True))
