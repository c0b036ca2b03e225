"""Turn (prompt, response) pairs into fixed-length token arrays with a loss mask.

Two text formats:

* ``"qa"``: ``"Question: {prompt}\\nAnswer: {response}"`` (the original SEAM
  format), with ``bos`` from the tokenizer and ``eos`` appended;
* ``"chat"``: the tokenizer's chat template with one user and one assistant turn.

Output arrays (all ``int32``, shape ``[N, T]``, right-padded, right-truncated):

* ``input_ids``: token ids, padding with the pad id (eos when there is none);
* ``attention_mask``: 1 for real tokens;
* ``loss_mask``: 1 where token ``t`` is a target. The loss shifts: logits at
  ``t-1`` predict token ``t``. With ``loss_on="response"`` the targets are the
  response tokens (plus what follows them: eos or the end-of-turn markup);
  with ``loss_on="all"`` every real token except the first, which is what the
  original computes on the benign set; ``loss_on="auto"`` is ``"response"`` for
  ``"chat"`` and ``"all"`` for ``"qa"`` (``resolve_loss_on``).

A row whose response is truncated away keeps its place with an all-zero
``loss_mask``; it is counted and logged, never dropped, so batch composition
stays a function of the seed. Loss code must divide by ``max(1, mask.sum())``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Format = Literal["qa", "chat"]
LossOn = Literal["response", "all", "auto"]
FORMATS: tuple[str, ...] = ("qa", "chat")
LOSS_ON: tuple[str, ...] = ("response", "all", "auto")

Batch = dict[str, np.ndarray]


def resolve_loss_on(loss_on: str, fmt: str) -> str:
    """``"auto"`` -> ``"response"`` for the chat format, ``"all"`` for ``"qa"``; others unchanged.

    In the chat format most of a short benign row is the template (SmolLM2's fixed
    system prompt is ~20 of ~52 tokens, the answer ~12), so a loss on every token
    mostly models the template; the answer is the benign data. The ``"qa"`` format
    has no template to speak of and keeps the original's loss on the whole text.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"unknown loss_on {loss_on!r}; expected one of {LOSS_ON}")
    if loss_on == "auto":
        return "response" if fmt == "chat" else "all"
    return loss_on


def pad_id(tokenizer: Any) -> int:
    """The id used for right padding: the pad token, else eos."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")


def _check_format(fmt: str, tokenizer: Any) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("format 'chat' needs a tokenizer with a chat template; use format 'qa'")


def prompt_text(tokenizer: Any, prompt: str, fmt: Format = "qa") -> str:
    """The text a model is given to answer ``prompt`` (what generation starts from)."""
    _check_format(fmt, tokenizer)
    if fmt == "qa":
        # No trailing space: BPE vocabularies attach a space to the next word,
        # so the model predicts " Sure" rather than a lone " ".
        return f"Question: {prompt}\nAnswer:"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def render_pair(tokenizer: Any, prompt: str, response: str, fmt: Format = "qa") -> tuple[str, str, int]:
    """Render one pair as text.

    Returns:
      ``(prefix, full, char_start)``: the prompt part (exactly what generation
      starts from), the whole text, and the character index in ``full`` where
      the continuation of ``prefix`` starts. For ``"qa"`` that is the space
      before the response: a model prompted with ``"...Answer:"`` has to
      generate it, so it is a target, whether the tokenizer glues it to the
      first word or keeps it as a token of its own.
    """
    prefix = prompt_text(tokenizer, prompt, fmt)
    if fmt == "qa":
        return prefix, f"{prefix} {response}", len(prefix)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    if full.startswith(prefix):
        return prefix, full, len(prefix)
    # Some templates render the last assistant turn differently from the
    # generation prompt (e.g. they drop a reasoning block); find the response.
    where = full.rfind(response.strip()) if response.strip() else -1
    if where < 0:
        raise ValueError(
            "chat template output neither starts with the generation prompt nor contains "
            f"the response; cannot locate the response in {full!r}"
        )
    return prefix, full, where


def _starts_from_offsets(offsets: Sequence[tuple[int, int]], char_start: int) -> int:
    """Index of the first token that covers a character at or after ``char_start``.

    A token straddling the boundary counts as a response token: predicting it
    predicts response text. Special tokens added by the tokenizer have the
    empty span (0, 0) and never start the response.
    """
    for t, (start, end) in enumerate(offsets):
        if end > char_start and end > start:
            return t
    return len(offsets)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _tokenize_with_starts(
    tokenizer: Any, prefixes: list[str], fulls: list[str], char_starts: list[int], add_special_tokens: bool
) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``fulls`` and the index of each one's first response token.

    Fast tokenizers give character offsets, which is exact. Others fall back to
    tokenizing the prompt part alone: the response starts where the two token
    sequences first differ, so a token merged across the boundary goes to the
    response either way.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(fulls, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        ids = [list(x) for x in enc["input_ids"]]
        starts = [_starts_from_offsets(o, c) for o, c in zip(enc["offset_mapping"], char_starts)]
        return ids, starts
    ids = [list(x) for x in tokenizer(fulls, add_special_tokens=add_special_tokens)["input_ids"]]
    pre = tokenizer(prefixes, add_special_tokens=add_special_tokens)["input_ids"]
    return ids, [_common_prefix_len(p, f) for p, f in zip(pre, ids)]


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    seq_len: int,
    fmt: Format = "qa",
    loss_on: LossOn = "response",
    add_eos: bool | None = None,
    name: str = "pairs",
) -> Batch:
    """Tokenize (prompt, response) pairs to fixed-length arrays.

    Args:
      tokenizer: a Hugging Face tokenizer (fast ones use exact offsets).
      pairs: (prompt, response) texts.
      seq_len: context length ``T``; longer texts are cut on the right.
      fmt: ``"qa"`` or ``"chat"``.
      loss_on: ``"response"``, ``"all"`` (every real token but the first) or
        ``"auto"`` (``resolve_loss_on``: response for chat, all for qa).
      add_eos: append eos after the response; default True for ``"qa"`` and
        False for ``"chat"`` (templates close the turn themselves).
      name: label for log messages (e.g. ``"adv"``).

    Returns:
      ``{"input_ids", "attention_mask", "loss_mask"}``, each ``int32 [N, T]``.
      Rows with no target token are kept (all-zero ``loss_mask``), counted and
      reported with a warning; find them with ``empty_loss_rows``.
    """
    _check_format(fmt, tokenizer)
    loss_on = resolve_loss_on(loss_on, fmt)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    n = len(pairs)
    out = {
        "input_ids": np.full((n, seq_len), pad_id(tokenizer), dtype=np.int32),
        "attention_mask": np.zeros((n, seq_len), dtype=np.int32),
        "loss_mask": np.zeros((n, seq_len), dtype=np.int32),
    }
    if n == 0:
        return out
    rendered = [render_pair(tokenizer, p, r, fmt) for p, r in pairs]
    # Chat templates write bos themselves; adding it again would double it.
    ids, starts = _tokenize_with_starts(
        tokenizer,
        [r[0] for r in rendered],
        [r[1] for r in rendered],
        [r[2] for r in rendered],
        add_special_tokens=(fmt == "qa"),
    )
    if add_eos is None:
        add_eos = fmt == "qa"
    eos = tokenizer.eos_token_id
    n_truncated = 0
    for i, (row, start) in enumerate(zip(ids, starts)):
        if add_eos and eos is not None and (not row or row[-1] != eos):
            row = row + [int(eos)]
        if len(row) > seq_len:
            n_truncated += 1
            row = row[:seq_len]
        length = len(row)
        out["input_ids"][i, :length] = row
        out["attention_mask"][i, :length] = 1
        if loss_on == "response":
            out["loss_mask"][i, min(start, length):length] = 1
        else:
            out["loss_mask"][i, 1:length] = 1
    empty = empty_loss_rows(out)
    if n_truncated:
        logger.info("%s: %d of %d rows truncated to %d tokens", name, n_truncated, n, seq_len)
    if len(empty):
        logger.warning(
            "%s: %d of %d rows have no loss tokens (response cut off at seq_len=%d); "
            "kept with an empty loss mask. First rows: %s",
            name, len(empty), n, seq_len, empty[:10].tolist(),
        )
    return out


def empty_loss_rows(batch: Batch) -> np.ndarray:
    """Indices of rows whose ``loss_mask`` is all zero."""
    return np.flatnonzero(batch["loss_mask"].sum(axis=1) == 0)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], fmt: Format = "qa") -> list[list[int]]:
    """Token ids of the generation prompt for each prompt, unpadded.

    The caller pads (on the left, for batched generation). For ``"chat"`` this
    is the template with ``add_generation_prompt=True``.
    """
    texts = [prompt_text(tokenizer, p, fmt) for p in prompts]
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=(fmt == "qa"))
    return [list(map(int, x)) for x in enc["input_ids"]]
