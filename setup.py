"""Thin setup.py for Beam's --setup_file (Dataflow workers); metadata is in pyproject.toml."""

from setuptools import setup

setup()
