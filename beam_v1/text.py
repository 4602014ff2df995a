"""Small text helpers shared by every layer (a leaf: imports nothing of beam_v1)."""

from __future__ import annotations

from collections.abc import Iterable

GRAPH_EXECUTION_ERROR = "Graph execution error:"


def split_list(value: str | Iterable[str] | None) -> list[str] | None:
    """A comma-separated string -> its names, stripped, empties dropped; a sequence -> a list.

    `"id, x,,y "` -> `['id', 'x', 'y']`. A sequence is taken as given (a column may really be
    named `" x"`); None stays None. The one splitter for tags, outputs and column lists, from
    flags and from the API alike.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [s for s in (item.strip() for item in value.split(",")) if s]
    return list(value)


def first_line(error: BaseException) -> str:
    """The line of an error's message that says what went wrong.

    TensorFlow appends node traces below it, and a graph built in this process wraps it as
    "Graph execution error: / Detected at node ... / Node: 'name' / <the line>": then the
    line after `Node:` is the one. Uses `error.message` when it has one (TensorFlow's
    OpError), else `str(error)`; an empty message gives the exception's type name.
    """
    text = (getattr(error, "message", None) or str(error)).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0] == GRAPH_EXECUTION_ERROR:
        after = [i + 1 for i, line in enumerate(lines) if line.startswith("Node: ")]
        if after and after[0] < len(lines):
            return lines[after[0]]
    return lines[0]
