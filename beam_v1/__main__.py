"""`python -m beam_v1` works like `beam-v1`."""

from beam_v1.cli.main import main

raise SystemExit(main())
