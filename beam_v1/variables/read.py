"""Read a variables dump back: `read_variables`, bit-exact, from the Parquet or npz files
that `beam_v1.variables.dump.WriteVariables` wrote (local files only; no Beam, no TensorFlow).
"""

from __future__ import annotations

import glob as glob_module
import json
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beam_v1 import dtypes
from beam_v1.errors import ModelFileError
from beam_v1.variables import encoding


def _dump_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    files = sorted(
        glob_module.glob(glob_module.escape(path) + "-*.parquet")
        + glob_module.glob(glob_module.escape(path) + "-*.npz")
    )
    if not files:
        files = sorted(glob_module.glob(path))
    if not files:
        raise ModelFileError(f"No dump at {path!r} (no file, and no {path}-*.parquet or .npz).")
    return files


def _model_of_npz(path: str, manifests: dict[str, str]) -> str:
    return manifests.get(os.path.abspath(path), path)


def _manifest(prefix: str) -> dict[str, str]:
    """File -> model, from the `PREFIX-manifest.jsonl` the dump writes."""
    found = {}
    for manifest in glob_module.glob(glob_module.escape(prefix) + "-manifest*.jsonl"):
        with open(manifest, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    found[os.path.abspath(row["file"])] = row["model"]
    return found


def read_variables(path: str, model: str | None = None) -> dict[str, np.ndarray]:
    """Read a dump back, bit-exact: {variable name: ndarray}.

    `path` is one `.parquet` or `.npz` file the dump wrote, or the dump's output prefix. A
    prefix (or a Parquet file) holding several models needs `model` (the model path as given
    to the dump, or its last folder name). Local files only.
    """
    files = _dump_files(path)
    manifest = _manifest(path) if not os.path.isfile(path) else {}
    by_model: dict[str, list[str]] = {}
    for file in files:
        if file.endswith(".npz"):
            by_model.setdefault(_model_of_npz(file, manifest), []).append(file)
        elif file.endswith(".parquet"):
            models = pq.read_table(file, columns=["model"]).column("model").unique()
            for m in models.to_pylist():
                by_model.setdefault(m, []).append(file)
    chosen = _choose_model(by_model, model, path)
    result: dict[str, np.ndarray] = {}
    for file in by_model[chosen]:
        if file.endswith(".npz"):
            with np.load(file, allow_pickle=False) as npz:
                recorded = _npz_dtypes(npz)
                for name in npz.files:
                    if name == encoding.NPZ_DTYPES_MEMBER:
                        continue
                    value = npz[name]
                    if name in recorded:
                        value = value.view(dtypes.numpy_dtype(recorded[name]))
                    elif value.dtype.kind == "S":  # a string variable: bytes objects, as TF's
                        value = value.astype(object)
                    result[name] = value
        else:
            result.update(_read_parquet(file, chosen))
    return result


def _npz_dtypes(npz) -> dict[str, str]:
    """{variable: dtype} that a dump's npz records beside its .npy headers
    (`dump_files.write_npz_dtypes`); {} for any other npz."""
    note = npz.zip.comment
    if encoding.NPZ_DTYPES_MEMBER in npz.zip.namelist():
        note = npz.zip.read(encoding.NPZ_DTYPES_MEMBER)
    if not note.startswith(b"{"):
        return {}
    try:
        return dict(json.loads(note.decode("utf-8")).get(encoding.NPZ_DTYPES_KEY, {}))
    except (ValueError, AttributeError):
        return {}


def _choose_model(by_model: dict[str, list[str]], model: str | None, path: str) -> str:
    if model is None:
        if len(by_model) == 1:
            return next(iter(by_model))
        raise ModelFileError(
            f"The dump at {path!r} holds {len(by_model)} models; choose one with model=...: "
            f"{', '.join(sorted(by_model))}."
        )
    if model in by_model:
        return model
    wanted = model.rstrip("/")
    matches = [
        m
        for m in by_model
        if m.rstrip("/") == wanted or os.path.basename(m.rstrip("/")) == os.path.basename(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    raise ModelFileError(
        f"Model {model!r} is {'ambiguous' if matches else 'not'} in the dump at {path!r}; it "
        f"holds: {', '.join(sorted(by_model))}."
    )


def _read_parquet(file: str, model: str) -> dict[str, np.ndarray]:
    columns = ["model", "name", "dtype", "shape", "num_slices", "row_start", "row_stop", "data"]
    result: dict[str, np.ndarray] = {}
    seen: dict[str, tuple[int, set[int]]] = {}  # sliced variable -> (slices, row starts seen)
    pf = pq.ParquetFile(file)
    for group in range(pf.num_row_groups):  # row group by row group: flat memory
        table = pf.read_row_group(group, columns=columns)
        table = table.filter(pc.equal(table.column("model"), model))
        for row in range(table.num_rows):
            name = table.column("name")[row].as_py()
            dtype = table.column("dtype")[row].as_py()
            shape = tuple(table.column("shape")[row].as_py())
            data = table.column("data")[row].as_buffer()
            if table.column("num_slices")[row].as_py() == 1:
                result[name] = encoding.from_bytes(bytes(data), dtype, shape).copy()
                continue
            start = table.column("row_start")[row].as_py()
            stop = table.column("row_stop")[row].as_py()
            if name not in result:
                result[name] = np.empty(shape, dtypes.numpy_dtype(dtype))
                seen[name] = (table.column("num_slices")[row].as_py(), set())
            result[name][start:stop] = encoding.from_bytes(data, dtype, (stop - start, *shape[1:]))
            seen[name][1].add(start)
    for name, (count, starts) in seen.items():
        if len(starts) != count:
            raise ModelFileError(
                f"{file}: variable {name!r} of {model} has {len(starts)} of its {count} slices."
            )
    return result
