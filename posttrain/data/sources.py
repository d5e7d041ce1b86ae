"""Datasets from a hub id or a local file (jsonl, json, csv, parquet), with split slicing and an eval split."""

from __future__ import annotations

import re
from pathlib import Path

from posttrain.errors import DataError
from posttrain.util import first_line

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SLICE = re.compile(r"^(?P<name>[\w.-]+)(\[(?P<a>-?\d*%?)?:(?P<b>-?\d*%?)?\])?$")


def is_local(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() in LOCAL_BUILDERS or p.exists() or source.startswith((".", "/", "~"))


def load_source(source: str, split: str = "train", name: str | None = None):
    """Load one split of a dataset; `split` may slice (`train[:1000]`, `train[10%:]`)."""
    import datasets

    if not _SLICE.match(split):
        raise DataError(f"data split {split!r} is not a split name with an optional slice, e.g. train[:1000]")
    try:
        if is_local(source):
            path = Path(source).expanduser()
            if not path.exists():
                raise DataError(f"data file not found: {source}")
            builder = LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: unsupported file type (use {', '.join(LOCAL_BUILDERS)})")
            if split.split("[")[0] != "train":
                raise DataError(f"{source}: a local file has only the 'train' split (got {split!r})")
            _check_utf8(path, builder)
            extra = _csv_as_text(path) if builder == "csv" else {}
            ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split=split, **extra)
        else:
            ds = datasets.load_dataset(source, name, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; all mean "this source cannot be read as asked"
        msg = first_line(e)
        if not is_local(source) and _offline_like(e):
            msg = f"cannot reach the Hugging Face hub for dataset '{source}' ({msg}); use a local file or set HF_HUB_OFFLINE=0"
        raise DataError(f"cannot load data {source!r} split {split!r}: {msg}") from None
    if len(ds) == 0:
        raise DataError(f"data {source!r} split {split!r} has no rows")
    return ds


def _csv_as_text(path: Path) -> dict:
    """CSV cells are text: "007" stays "007" and an empty cell is "", not NaN."""
    import csv

    import datasets

    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False}


def _offline_like(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("offline", "connection", "couldn't reach", "resolve", "not find", "doesn't exist"))


def _check_utf8(path: Path, builder: str):
    if builder == "parquet":
        return
    with path.open("rb") as f:
        head = f.read(1 << 20)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the 1 MiB boundary
            raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None


def rename_columns(ds, column_map: dict, source: str):
    missing = [c for c in column_map if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: data.column_map names column(s) {', '.join(missing)} not in the data "
                        f"(columns found: {', '.join(ds.column_names)})")
    return ds.rename_columns(dict(column_map))
