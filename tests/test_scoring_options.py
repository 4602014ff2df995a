"""ScoringOptions / OutputOptions (beam_v1.scoring.options): validation, sorting of keywords."""

from __future__ import annotations

import pickle

import pytest

from beam_v1.model.options import LoadOptions
from beam_v1.scoring.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_BYTES,
    OutputOptions,
    ScoringOptions,
    sort_options,
)


def test_defaults_normalise_and_pickle():
    o = ScoringOptions(outputs="a,b", keep_columns=["id"], column_map={"f": "x"})
    assert (o.batch_size, o.max_batch_bytes) == (DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES)
    assert o.outputs == ("a", "b") and o.keep_columns == ("id",)
    assert o.column_map == {"f": "x"} and o.output_shapes == {}
    assert pickle.loads(pickle.dumps(o)) == o
    out = OutputOptions(prefix="out/s")
    assert out.dead_letter_prefix == "out/s-failed" and out.codec == "snappy"


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch_size"), (dict(max_batch_bytes=0), "max_batch_bytes"),
    (dict(example_feed="direct"), "example_feed"), (dict(batch_size="10"), "batch_size"),
])
def test_scoring_options_refuse_bad_values(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ScoringOptions(**bad)


def test_output_options_refuse_bad_values():
    with pytest.raises(ValueError, match="codec"):
        OutputOptions(prefix="p", codec="lzma")
    with pytest.raises(ValueError, match="num_shards"):
        OutputOptions(prefix="p", num_shards=-1)


def test_sort_options_sorts_flat_and_typed_keywords():
    load, scoring, output = sort_options(
        dict(batch_size=7, intra_op_threads=2, codec="zstd", scoring=ScoringOptions(
            keep_columns=["id"])), output="out/p",
    )
    assert load == LoadOptions(intra_op_threads=2)
    assert scoring == ScoringOptions(batch_size=7, keep_columns=["id"])
    assert output == OutputOptions(prefix="out/p", codec="zstd")
    with pytest.raises(TypeError, match=r"\['batchsize'\].*batch_size"):
        sort_options(dict(batchsize=7))
    with pytest.raises(TypeError, match="codec"):  # nothing written: output keywords refused
        sort_options(dict(codec="zstd"))
