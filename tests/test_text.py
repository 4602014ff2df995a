"""beam_v1.text: the one list splitter and the one first_line, and their call sites."""

from __future__ import annotations

import os

import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_v1.model.metadata import parse_tags
from beam_v1.scoring.options import freeze_list
from beam_v1.text import first_line, split_list

EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "60"))
names = st.lists(
    st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1)
    .map(str.strip)
    .filter(bool),
    max_size=6,
)


def test_split_list_strips_and_drops_empties():
    assert split_list("id, x,,y ") == ["id", "x", "y"]
    assert split_list(" , ") == []
    assert split_list(None) is None
    assert split_list([" x", "y"]) == [" x", "y"]  # a sequence is taken as given


def test_every_splitter_agrees():
    """The API's freeze_list, parse_tags and the CLI flag type all split the same way."""
    from beam_v1.cli.flags import csv_list

    assert freeze_list("id, x") == ("id", "x")
    assert parse_tags("serve, gpu") == ["serve", "gpu"]
    assert csv_list("id, x") == ["id", "x"]


@settings(max_examples=EXAMPLES, deadline=None)
@given(names, st.lists(st.sampled_from(["", " ", "  "]), min_size=1, max_size=4))
def test_split_list_round_trips_joined_names(items, pads):
    text = ",".join(f"{pads[i % len(pads)]}{item}{pads[-1 - i % len(pads)]}"
                    for i, item in enumerate(items))
    assert split_list(text) == items


def test_first_line_of_a_tensorflow_error_drops_the_node_trace():
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.debugging.check_numerics(x, "bad value")
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                sess.run(y, {x: [float("nan")]})
            except tf.errors.OpError as e:
                error = e
    # TensorFlow wraps the cause ("Graph execution error: ... Node: 'CheckNumerics'") and
    # appends the node's stack below it
    assert error.message.startswith("Graph execution error:")
    assert first_line(error) == "bad value : Tensor had NaN values"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("  one\ntwo")) == "one"
