"""Placeholder replaced by the scoring issue."""


def add_score_flags(parser):
    parser.add_argument("--model", required=True)


def run_score(args, extra):
    raise NotImplementedError
