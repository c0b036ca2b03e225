"""Row schemas of the three real data sets SEAM uses, and their validation.

* ``REFUSAL``: RepNoise's ``beavertails_with_refusals_train.json`` (``D_adv`` and
  ``D_aln``: the same harmful prompt with a compliant ``response`` and a ``refusal``).
* ``BEAVERTAILS``: ``PKU-Alignment/BeaverTails`` (test prompts, split ``30k_test``).
* ``ALPACA``: ``yahma/alpaca-cleaned`` (``D_bgn``).

Rows are plain dicts, exactly as ``datasets`` returns them. Extra fields are
allowed (real dumps carry some); missing or mistyped required ones are not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


class DataError(ValueError):
    """A data file, hub data set or row is missing, unreadable or malformed.

    The message always names the source (path or hub id) and, for a bad row,
    its index and field, and says what to do about it.
    """


@dataclass(frozen=True)
class Schema:
    """Required fields of one row format.

    Attributes:
      name: short name used in messages and in ``get_schema``.
      fields: field name -> checker kind: ``"str"``, ``"bool"``,
        ``"category"`` (dict of str -> bool) or ``"category_or_str"``.
      nonempty: text fields that must not be empty or blank (the prompt-like
        field: an empty prompt makes no training example).
      origin: where real rows in this schema come from, for error messages.
    """

    name: str
    fields: Mapping[str, str]
    nonempty: tuple[str, ...]
    origin: str


REFUSAL = Schema(
    name="refusal",
    # RepNoise builds this file from BeaverTails and iterates ``category.items()``,
    # so it is a dict there; a plain category name is accepted too because
    # hand-made variants of the file often flatten it.
    fields={
        "prompt": "str",
        "response": "str",
        "category": "category_or_str",
        "is_safe": "bool",
        "refusal": "str",
    },
    nonempty=("prompt",),
    origin="RepNoise beavertails_with_refusals_train.json",
)
BEAVERTAILS = Schema(
    name="beavertails",
    fields={"prompt": "str", "response": "str", "category": "category", "is_safe": "bool"},
    nonempty=("prompt",),
    origin="PKU-Alignment/BeaverTails (split 30k_train / 30k_test)",
)
ALPACA = Schema(
    name="alpaca",
    fields={"instruction": "str", "input": "str", "output": "str"},
    nonempty=("instruction",),
    origin="yahma/alpaca-cleaned",
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (REFUSAL, BEAVERTAILS, ALPACA)}


def get_schema(schema: Schema | str) -> Schema:
    """Return the schema object for a schema or its name (``refusal``, ``beavertails``, ``alpaca``)."""
    if isinstance(schema, Schema):
        return schema
    try:
        return SCHEMAS[schema]
    except KeyError:
        raise ValueError(f"unknown schema {schema!r}; expected one of {sorted(SCHEMAS)}") from None


def _type_problem(kind: str, value: Any) -> str | None:
    """Describe why ``value`` does not fit ``kind``, or None if it fits."""
    if value is None:
        # Arrow turns a field absent from some rows into None, so "missing"
        # and "null" cannot be told apart after loading.
        return "is missing or null"
    if kind == "str":
        return None if isinstance(value, str) else f"should be a string, got {type(value).__name__}"
    if kind == "bool":
        # bool is checked strictly: 0/1 or "false" would silently flip meaning
        # in `is_safe` filters.
        return None if isinstance(value, bool) else f"should be true/false, got {value!r}"
    if kind in ("category", "category_or_str"):
        if kind == "category_or_str" and isinstance(value, str):
            return None
        if not isinstance(value, Mapping):
            return f"should be a dict of category name -> true/false, got {type(value).__name__}"
        for key, flag in value.items():
            if not isinstance(flag, bool):
                return f"entry {key!r} should be true/false, got {flag!r}"
        return None
    raise AssertionError(f"unknown field kind {kind!r}")


def validate_row(row: Any, schema: Schema | str, source: str, index: int) -> None:
    """Check one row against ``schema``; raise ``DataError`` naming source, row and field."""
    schema = get_schema(schema)
    where = f"{source}: row {index}"
    expected = ", ".join(f"{k} ({v})" for k, v in schema.fields.items())
    if not isinstance(row, Mapping):
        raise DataError(
            f"{where} is a {type(row).__name__}, not an object. Each row of a "
            f"{schema.name!r} file must be an object with fields {expected} "
            f"(as in {schema.origin})."
        )
    for field, kind in schema.fields.items():
        problem = _type_problem(kind, row.get(field))
        if problem is not None:
            raise DataError(
                f"{where}: field {field!r} {problem}. Fix or drop this row; every "
                f"row of a {schema.name!r} file needs {expected} (as in {schema.origin})."
            )
    for field in schema.nonempty:
        if not row[field].strip():
            raise DataError(
                f"{where}: field {field!r} is empty. Fix or drop this row; an empty "
                f"{field} gives no training example."
            )


def validate_rows(rows: Sequence[Any], schema: Schema | str, source: str) -> list[Row]:
    """Validate every row (stopping at the first bad one) and return them as a list.

    Raises:
      DataError: the source is empty, or a row is not an object, lacks a field
        or has a field of the wrong type.
    """
    schema = get_schema(schema)
    if len(rows) == 0:
        raise DataError(
            f"{source}: no rows. Expected a non-empty list of {schema.name!r} rows "
            f"(as in {schema.origin})."
        )
    for i, row in enumerate(rows):
        validate_row(row, schema, source, i)
    return list(rows)


def is_unsafe(row: Mapping[str, Any]) -> bool:
    """True for a harmful row (``is_safe`` false) of the refusal or BeaverTails schema."""
    return row["is_safe"] is False


def refusal_text(row: Mapping[str, Any]) -> str:
    """The refusal of a refusal-schema row, without an echoed prompt.

    RepNoise generated refusals by decoding prompt plus continuation, so a
    refusal may start with ``"Question: {prompt}\\nAnswer:"``; that echo would
    otherwise become part of the training target.
    """
    text: str = row["refusal"]
    echo = f"Question: {row['prompt']}\nAnswer:"
    if text.startswith(echo):
        return text[len(echo):].strip()
    return text


def alpaca_prompt(row: Mapping[str, Any]) -> str:
    """The user prompt of an alpaca row: the instruction, then the input if any."""
    extra = row["input"].strip()
    return f"{row['instruction']}\n{extra}" if extra else row["instruction"]


def harmful_pair(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, compliant response) of a refusal-schema or BeaverTails row: ``D_adv``."""
    return row["prompt"], row["response"]


def refusal_pair(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, refusal) of a refusal-schema row: ``D_aln``."""
    return row["prompt"], refusal_text(row)


def benign_pair(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, output) of an alpaca row: ``D_bgn``."""
    return alpaca_prompt(row), row["output"]
