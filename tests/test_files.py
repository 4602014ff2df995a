"""`beam_v1.io.files`: matching input files as dataset readers do.

The oracle for which files are data is pyarrow.dataset's discovery (it skips names starting
with "." or "_", as Spark and Hive do); scoring a Spark-style folder is checked against
pyarrow.dataset's rows and a direct TensorFlow session.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scoring_helpers import tf_reference, write_mlp_parquet

from beam_v1.cli import main as cli
from beam_v1.io import files

FUZZ_EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "40"))

names = st.builds(
    lambda prefix, stem: prefix + stem,
    st.sampled_from(["", "", "", ".", "_"]),
    st.text("abz019=-", min_size=1, max_size=6),
)
trees = st.lists(st.lists(names, min_size=1, max_size=3), min_size=1, max_size=12)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_data_files_are_those_pyarrow_dataset_discovers(tree):
    root = tempfile.mkdtemp(prefix="tree-")
    try:
        for parts in tree:
            path = os.path.join(root, *parts)
            if os.path.isdir(path) or any(
                os.path.isfile(os.path.join(root, *parts[:i])) for i in range(1, len(parts))
            ):
                continue  # a name already used as a file (or folder) the other way
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
        discovered = ds.dataset(root, format="parquet", schema=pa.schema([])).files
        data, hidden = files.match_data_files(root + "/**")
        assert data == sorted(discovered)
        assert sorted(data + hidden) == files.match(root + "/**")
    finally:
        shutil.rmtree(root)


def test_a_pattern_without_wildcard_names_its_file(tmp_path):
    (tmp_path / "_part.parquet").touch()
    assert files.match_data_files(str(tmp_path / "_part.parquet")) == (
        [str(tmp_path / "_part.parquet")], [])
    assert files.match_data_files(str(tmp_path / "_p*.parquet"))[0] == [
        str(tmp_path / "_part.parquet")]


def _spark_folder(root) -> None:
    """Parquet parts as a Spark job leaves them: `_SUCCESS`, Hadoop `.crc` files beside each
    part, and a `_temporary` folder holding an unfinished part."""
    write_mlp_parquet(str(root), n_files=3, rows=40)
    for part in sorted(root.glob("part-*.parquet")):
        part.rename(root / f"part-0000{part.stem[-1]}-c000.snappy.parquet")
    for part in root.glob("part-*.parquet"):
        (root / f".{part.name}.crc").write_bytes(b"crc\x00\x00\x00\x02\x00garbage")
    (root / "_SUCCESS").touch()
    unfinished = root / "_temporary" / "0" / "_temporary" / "attempt_0"
    unfinished.mkdir(parents=True)
    (unfinished / "part-00009.parquet").write_bytes(b"PAR1 half-written")


def test_score_a_spark_output_folder(built_models, tmp_path):
    model = built_models["mlp"]
    data = tmp_path / "data"
    data.mkdir()
    _spark_folder(data)
    truth = ds.dataset(str(data), format="parquet").to_table().sort_by("id")
    want = tf_reference(model, {"x": np.asarray(truth["x"].to_pylist(), np.float32)})
    for n, pattern in enumerate([f"{data}/", f"{data}/**", f"{data}/*"]):
        prefix = str(tmp_path / f"out{n}")
        argv = ["score", "--model", model, "--input", pattern, "--output", prefix,
                "--outputs", "label", "--quiet"]
        assert cli.main(argv) == 0, pattern
        with open(f"{prefix}-summary.json") as f:
            summary = json.load(f)
        assert summary["rows_in"] == summary["rows_scored"] == truth.num_rows, pattern
        scored = pa.concat_tables(pq.read_table(p) for p in summary["files_written"])
        scored = scored.sort_by("id")
        assert scored["id"].to_pylist() == truth["id"].to_pylist()
        np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])


def test_only_hidden_files_is_a_named_error(built_models, tmp_path, capsys):
    (tmp_path / "_SUCCESS").touch()
    (tmp_path / ".part-0.parquet.crc").touch()
    argv = ["score", "--model", built_models["mlp"], "--input", f"{tmp_path}/*",
            "--output", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "No input file matches" in err and "2 hidden file(s)" in err and "_SUCCESS" in err
