"""Score Parquet files with a TF1 SavedModel on any Beam runner.

    python -m pipelines.score_parquet --model MODEL --input 'data/*.parquet' \
        --output out/scored [--signature KEY] [--map column=input_key] \
        [--runner DataflowRunner --setup_file ./setup.py ...]

The same flags as `beam-v1 score`; flags it does not know go to Beam's PipelineOptions
(a flag neither knows stops it with exit status 2).
"""

from __future__ import annotations

import sys

from beam_v1.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]], hard_stop=True))
