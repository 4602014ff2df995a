"""The beam-v1 command line: inspect, score, dump-variables, demo.

main.py builds the parser from each command's module (inspect, score, dump, demo), which
share flags.py; startup_lines.py keeps TensorFlow's start-up lines off stderr. Commands call
the library (beam_v1.scoring.job, beam_v1.variables.dump); nothing below imports cli.
"""
