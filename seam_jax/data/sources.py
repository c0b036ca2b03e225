"""Load validated rows from a hub data set or a local file, through ``datasets``.

Local files (.json list, .jsonl, .parquet, .csv) go through the matching
``datasets`` packaged builder, so real dumps and the proxy files written by
``proxy.write_proxy`` take the same path. Every failure is a ``DataError``
naming the file (or hub id) and, for a bad row, the row index.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from seam_jax.data.schemas import DataError, Row, Schema, get_schema, validate_rows

logger = logging.getLogger(__name__)

# Suffix -> ``datasets`` packaged builder name.
BUILDERS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


def is_local_source(source: str | Path) -> bool:
    """Whether ``source`` names a local file rather than a hub id.

    A path that exists, or that ends in a known data suffix, is local: a typo
    in a file name must give "file not found", not a hub download attempt.
    """
    path = Path(source)
    return path.exists() or path.suffix.lower() in BUILDERS


def load_rows(
    source: str | Path,
    schema: Schema | str,
    *,
    split: str = "train",
    cache_dir: str | None = None,
) -> list[Row]:
    """Load and validate rows from a local file or a hub data set.

    Args:
      source: a local path (.json, .jsonl, .parquet, .csv) or a hub id such as
        ``"PKU-Alignment/BeaverTails"``.
      schema: the expected row schema (object or name).
      split: hub split (e.g. ``"30k_test"``); ignored for local files.
      cache_dir: ``datasets`` cache directory; see ``load_local``/``load_hub``.

    Returns:
      The rows as a list of dicts.

    Raises:
      DataError: missing/unreadable source or malformed row.
    """
    if is_local_source(source):
        return load_local(source, schema, cache_dir=cache_dir)
    return load_hub(str(source), schema, split=split, cache_dir=cache_dir)


def load_hub(
    hub_id: str, schema: Schema | str, *, split: str, cache_dir: str | None = None
) -> list[Row]:
    """Load ``split`` of hub data set ``hub_id`` with ``datasets.load_dataset`` and validate it.

    Needs network access (or a warm ``datasets`` cache); the test-suite never calls it.
    """
    import datasets  # deferred: importing datasets costs about a second

    schema = get_schema(schema)
    source = f"{hub_id} (split {split!r})"
    try:
        ds = datasets.load_dataset(hub_id, split=split, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(
            f"{source}: could not load from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Check the id and split name, network access and HF_TOKEN, or download the "
            "data once and pass the local file instead."
        ) from exc
    rows = ds.to_list()
    logger.info("loaded %d rows from %s", len(rows), source)
    return validate_rows(rows, schema, source)


def load_local(
    path: str | Path, schema: Schema | str, *, cache_dir: str | None = None
) -> list[Row]:
    """Load and validate a local .json (list or lines), .jsonl, .parquet or .csv file.

    With ``cache_dir=None`` the ``datasets`` builder writes its Arrow cache to a
    temporary directory that is removed afterwards: these files are small, and
    a persistent cache keyed on path and mtime can serve stale rows after an
    edit.

    Raises:
      DataError: the file is missing, has an unknown suffix, cannot be parsed,
        or holds a malformed row (the message names file, row and field).
    """
    import datasets  # deferred: importing datasets costs about a second

    schema = get_schema(schema)
    path = Path(path)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix!r}. Use one of {sorted(BUILDERS)}, "
            "or pass a hub id."
        )
    if not path.is_file():
        raise DataError(
            f"{path}: file not found. Check the path, or generate offline proxy data "
            "with seam_jax.data.proxy.write_proxy."
        )
    # CSV has no types: read every cell as text (an empty alpaca `input` must
    # stay "" rather than become NaN, and "3" must stay "3"), then convert the
    # boolean fields.
    options = _csv_options(path) if builder == "csv" else {}
    try:
        with tempfile.TemporaryDirectory(prefix="seam_jax_ds_") as tmp:
            ds = datasets.load_dataset(
                builder,
                data_files=str(path),
                split="train",
                cache_dir=cache_dir or tmp,
                keep_in_memory=True,
                **options,
            )
            rows = ds.to_list()
    except Exception as exc:  # noqa: BLE001 - re-raised as DataError below
        _raise_with_row_detail(path, schema, exc)
    if builder == "csv":
        rows = [_csv_bools(row, schema) for row in rows]
    logger.info("loaded %d rows from %s", len(rows), path)
    return validate_rows(rows, schema, str(path))


def _csv_options(path: Path) -> dict[str, Any]:
    """Builder options reading every column of a CSV file as text."""
    import datasets

    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "na_filter": False}


def _csv_bools(row: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Turn "true"/"false" cells of boolean fields into bools; leave anything else for validation."""
    out = dict(row)
    for field, kind in schema.fields.items():
        value = out.get(field)
        if kind == "bool" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[field] = value.strip().lower() == "true"
    return out


def _raise_with_row_detail(path: Path, schema: Schema, exc: Exception) -> NoReturn:
    """Turn a builder failure into a DataError, naming the bad row when possible.

    Arrow rejects a file whose rows disagree on a field's type without saying
    which row; re-reading JSON with the standard library finds it.
    """
    if path.suffix.lower() in (".json", ".jsonl"):
        rows = _read_json_rows(path)
        if rows is not None:
            validate_rows(rows, schema, str(path))  # raises with the row index
    cause = exc.__cause__ or exc
    raise DataError(
        f"{path}: could not parse as {path.suffix} ({type(cause).__name__}: {cause}). "
        f"Expected {schema.name!r} rows (as in {schema.origin}); fix or re-export the file."
    ) from exc


def _read_json_rows(path: Path) -> list[Any] | None:
    """Rows of a JSON list or JSON-lines file, or None if it does not parse as either."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else None
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return None
