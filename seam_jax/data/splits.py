"""Deterministic, prompt-disjoint splits of harmful rows into defense / attack / test.

The original code takes the defense and the attack set from the first rows of
the same file, so the attacker fine-tunes on prompts the defense already saw.
Here rows are grouped by prompt text, the groups are shuffled from a seed, and
each group goes to exactly one split. ``check_disjoint`` verifies the result
(and any splits built by other means) and raises ``DataError`` on overlap.

Prompts are compared after collapsing whitespace and case-folding, so trivial
variants of one prompt count as the same prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, TypeVar

import numpy as np

from seam_jax.data.schemas import DataError, Row, alpaca_prompt, is_unsafe

logger = logging.getLogger(__name__)

T = TypeVar("T")


def prompt_key(text: str) -> str:
    """Normalized prompt text used to decide whether two prompts are the same."""
    return " ".join(text.split()).casefold()


def _row_prompt(row: Mapping[str, Any]) -> str:
    """The prompt of a refusal/BeaverTails row, or instruction plus input of an alpaca row."""
    return row["prompt"] if "prompt" in row else alpaca_prompt(row)


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """A copy of ``items`` in an order drawn from ``seed`` (numpy Generator)."""
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[int(i)] for i in order]


def split_by_prompt(
    rows: Sequence[Row],
    sizes: Mapping[str, int | None],
    seed: int,
    *,
    prompt_of: Callable[[Mapping[str, Any]], str] = _row_prompt,
) -> dict[str, list[Row]]:
    """Split rows into named, prompt-disjoint parts of the requested sizes.

    Rows sharing a prompt (BeaverTails has several responses per prompt) form
    one group and never straddle two parts. Groups are shuffled from ``seed``
    and dealt in order of ``sizes``; when a group would overfill a part, only
    the rows needed are used and the rest of that group is discarded (it cannot
    go to another part).

    Args:
      rows: the rows to split.
      sizes: part name -> number of rows, in dealing order; ``None`` (only for
        the last part) takes all remaining rows.
      seed: shuffle seed.
      prompt_of: how to read a row's prompt.

    Returns:
      part name -> rows, in shuffled order.

    Raises:
      DataError: not enough rows for the requested sizes.
      ValueError: a negative size, or ``None`` other than last.
    """
    names = list(sizes)
    for k, name in enumerate(names):
        size = sizes[name]
        if size is None and k != len(names) - 1:
            raise ValueError(f"only the last split may take the rest; {name!r} has size None")
        if size is not None and size < 0:
            raise ValueError(f"split {name!r} has negative size {size}")
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(prompt_key(prompt_of(row)), []).append(row)
    order = shuffled(list(groups), seed)
    parts: dict[str, list[Row]] = {name: [] for name in names}
    cursor, discarded = 0, 0
    for name in names:
        want = sizes[name]
        while (want is None or len(parts[name]) < want) and cursor < len(order):
            group = groups[order[cursor]]
            cursor += 1
            take = len(group) if want is None else min(len(group), want - len(parts[name]))
            parts[name].extend(group[:take])
            discarded += len(group) - take
        if want is not None and len(parts[name]) < want:
            raise DataError(
                f"not enough rows to split: asked for {dict(sizes)} rows, but after giving "
                f"each prompt to one split only {len(parts[name])} are left for {name!r} "
                f"({len(rows)} rows, {len(groups)} distinct prompts). Use smaller sizes or more data."
            )
    if discarded:
        logger.info("split_by_prompt: %d rows discarded to keep prompts in one split", discarded)
    return parts


def check_disjoint(
    splits: Mapping[str, Sequence[Any]],
    *,
    prompt_of: Callable[[Mapping[str, Any]], str] = _row_prompt,
    max_listed: int = 5,
) -> None:
    """Raise ``DataError`` if any two splits share a prompt.

    Args:
      splits: split name -> rows (dicts) or prompt strings.
      prompt_of: how to read a row's prompt.
      max_listed: how many shared prompts to quote per pair of splits.
    """
    keys: dict[str, dict[str, str]] = {}
    for name, items in splits.items():
        keys[name] = {}
        for item in items:
            text = item if isinstance(item, str) else prompt_of(item)
            keys[name].setdefault(prompt_key(text), text)
    problems = []
    for a, b in combinations(splits, 2):
        shared = sorted(keys[a].keys() & keys[b].keys())
        if shared:
            quoted = "; ".join(repr(keys[a][k]) for k in shared[:max_listed])
            more = f" and {len(shared) - max_listed} more" if len(shared) > max_listed else ""
            problems.append(f"{a!r} and {b!r} share {len(shared)} prompt(s): {quoted}{more}")
    if problems:
        raise DataError(
            "splits overlap, so an attack or test would reuse defense prompts: "
            + " | ".join(problems)
            + ". Build the splits with split_by_prompt, or drop the shared prompts."
        )


def drop_prompts(rows: Sequence[Row], exclude: Sequence[Any], *, name: str = "rows") -> list[Row]:
    """Rows whose prompt does not occur in ``exclude`` (rows or prompt strings).

    Test prompts come from another file (BeaverTails ``30k_test``) and may repeat
    training prompts; this removes them, with a log line saying how many.
    """
    banned = {prompt_key(x if isinstance(x, str) else _row_prompt(x)) for x in exclude}
    kept = [r for r in rows if prompt_key(_row_prompt(r)) not in banned]
    if len(kept) < len(rows):
        logger.warning(
            "%s: dropped %d of %d rows whose prompt is in another split",
            name, len(rows) - len(kept), len(rows),
        )
    return kept


@dataclass(frozen=True)
class SeamSplits:
    """Prompt-disjoint harmful data for one SEAM experiment.

    Attributes:
      defense: refusal-schema rows for ``D_adv``/``D_aln`` during SEAM training.
      attack: refusal-schema rows whose (prompt, response) the attacker fine-tunes on.
      test: rows (BeaverTails schema) whose prompts measure harmfulness.
    """

    defense: list[Row]
    attack: list[Row]
    test: list[Row]

    def as_dict(self) -> dict[str, list[Row]]:
        return {"defense": self.defense, "attack": self.attack, "test": self.test}


def build_splits(
    harmful_rows: Sequence[Row],
    test_rows: Sequence[Row],
    *,
    n_defense: int,
    n_attack: int,
    n_test: int | None,
    seed: int,
    drop_test_overlap: bool = True,
) -> SeamSplits:
    """Make defense / attack / test splits and check they are disjoint.

    Args:
      harmful_rows: refusal-schema rows; unsafe ones are split into defense and attack.
      test_rows: BeaverTails-schema rows; the unsafe ones, in file order, are test
        prompts (the original takes the first 100).
      n_defense, n_attack: rows per split.
      n_test: number of test rows (``None``: all).
      seed: shuffle seed.
      drop_test_overlap: drop test rows whose prompt is in defense or attack
        (logged); if False such overlap raises ``DataError``.

    Raises:
      DataError: too few rows, or overlapping splits.
    """
    unsafe = [r for r in harmful_rows if is_unsafe(r)]
    if len(unsafe) < len(harmful_rows):
        logger.info("build_splits: kept %d unsafe of %d harmful rows", len(unsafe), len(harmful_rows))
    parts = split_by_prompt(unsafe, {"defense": n_defense, "attack": n_attack}, seed)
    test = [r for r in test_rows if is_unsafe(r)]
    if drop_test_overlap:
        test = drop_prompts(test, parts["defense"] + parts["attack"], name="test")
    if n_test is not None:
        if len(test) < n_test:
            raise DataError(f"asked for {n_test} test rows but only {len(test)} unsafe, non-overlapping ones exist")
        test = test[:n_test]
    splits = SeamSplits(defense=parts["defense"], attack=parts["attack"], test=test)
    check_disjoint(splits.as_dict())
    logger.info(
        "splits: %d defense, %d attack, %d test rows (seed %d)",
        len(splits.defense), len(splits.attack), len(splits.test), seed,
    )
    return splits
