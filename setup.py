"""Thin setup.py so Beam users can pass --setup_file to Dataflow; metadata lives in pyproject.toml."""

from setuptools import setup

setup()
