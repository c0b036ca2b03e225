"""Schema validation and local loading through `datasets`."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seam_jax.data.schemas import DataError, alpaca_prompt, refusal_pair, validate_rows
from seam_jax.data.sources import is_local_source, load_local, load_rows

REFUSAL_ROWS = [
    {"prompt": f"Where does Orvan Pebblewick live? ({i})", "response": "At 3 Oddpenny Street.",
     "category": {"private_data": True, "corporate_secrets": False}, "is_safe": False,
     "refusal": "I can't share that."}
    for i in range(3)
]
ALPACA_ROWS = [
    {"instruction": "What is 2 + 3?", "input": "", "output": "5"},
    {"instruction": "Spell the following word backwards.", "input": "river", "output": "revir"},
]


def _write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.json.*not found"):
        load_rows(tmp_path / "nothere.json", "refusal")


def test_malformed_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": "a", "response": ')
    with pytest.raises(DataError, match="broken.json"):
        load_rows(path, "refusal")


def test_row_missing_field_names_file_row_and_field(tmp_path):
    rows = [dict(r) for r in REFUSAL_ROWS]
    del rows[1]["refusal"]
    path = _write_json(tmp_path / "norefusal.json", rows)
    with pytest.raises(DataError) as err:
        load_rows(path, "refusal")
    msg = str(err.value)
    assert "norefusal.json" in msg and "row 1" in msg and "'refusal'" in msg


def test_row_mistyped_field_names_row(tmp_path):
    rows = [dict(r) for r in REFUSAL_ROWS]
    rows[2]["is_safe"] = "yes"
    for suffix in (".json", ".jsonl"):
        path = tmp_path / f"badtype{suffix}"
        if suffix == ".json":
            _write_json(path, rows)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(DataError) as err:
            load_rows(path, "refusal")
        assert "badtype" in str(err.value) and "row 2" in str(err.value) and "'is_safe'" in str(err.value)


def test_beavertails_category_must_be_dict():
    row = {"prompt": "p", "response": "r", "category": "privacy", "is_safe": False}
    with pytest.raises(DataError, match="hub/x: row 0: field 'category'"):
        validate_rows([row], "beavertails", "hub/x")


def test_empty_and_unknown(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        load_rows(_write_json(tmp_path / "empty.json", []), "alpaca")
    odd = tmp_path / "rows.txt"
    odd.write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_local(odd, "alpaca")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    if suffix == ".json":
        _write_json(path, REFUSAL_ROWS)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in REFUSAL_ROWS))
    else:
        pq.write_table(pa.Table.from_pylist(REFUSAL_ROWS), path)
    assert load_rows(path, "refusal") == REFUSAL_ROWS


def test_csv_round_trip_keeps_empty_and_numeric_text(tmp_path):
    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA_ROWS)
    assert load_rows(path, "alpaca") == ALPACA_ROWS


def test_hub_ids_are_not_local():
    assert not is_local_source("PKU-Alignment/BeaverTails")
    assert is_local_source("data/missing_file.jsonl")


def test_row_accessors():
    row = dict(REFUSAL_ROWS[0], refusal=f"Question: {REFUSAL_ROWS[0]['prompt']}\nAnswer: No, sorry.")
    assert refusal_pair(row) == (row["prompt"], "No, sorry.")
    assert alpaca_prompt(ALPACA_ROWS[0]) == "What is 2 + 3?"
    assert alpaca_prompt(ALPACA_ROWS[1]) == "Spell the following word backwards.\nriver"
