"""The beam-v1 command line: inspect, score, dump-variables, demo."""
