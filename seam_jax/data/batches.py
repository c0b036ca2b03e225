"""Stateless batch sampling: the batch of a step is a function of (seed, step).

Rows form an endless stream of epochs; epoch ``e`` visits the rows in a
permutation drawn from ``(seed, stream, e)``. Global batch ``step`` is positions
``step*B .. step*B+B-1`` of that stream, so its epoch is ``step*B // N``. A run
resumed at step ``s`` therefore sees exactly the batches it would have seen,
with no sampler state in the checkpoint. A batch that straddles an epoch
boundary takes the end of one permutation and the start of the next (a row
can then appear twice in it).

With several hosts, each takes a contiguous slice of the global batch, so the
hosts' slices concatenate, in process order, to the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from seam_jax.data.format import Batch, Format, LossOn, empty_loss_rows, encode_pairs
from seam_jax.data.schemas import DataError, Row, benign_pair, harmful_pair, is_unsafe, refusal_pair

logger = logging.getLogger(__name__)

# Independent sampler streams of one seed: D_adv/D_aln share one, D_bgn has its own.
HARMFUL_STREAM = 0
BENIGN_STREAM = 1
_CACHED_EPOCHS = 4


def shard_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    """This host's contiguous part of a global batch of ``batch_size`` rows.

    Raises:
      ValueError: bad process index/count, or a batch that does not divide evenly.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
    if batch_size % process_count:
        raise ValueError(
            f"global batch size {batch_size} does not divide evenly across {process_count} "
            "processes; choose a batch size that is a multiple of the process count"
        )
    per_host = batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


class IndexSampler:
    """Row indices of each step's global batch, from (seed, stream, step) alone.

    Args:
      num_rows: ``N``, rows in the data set.
      batch_size: ``B``, global batch size.
      seed: experiment seed.
      stream: separates samplers sharing a seed (see ``HARMFUL_STREAM``).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, stream: int = 0) -> None:
        if num_rows < 1:
            raise ValueError("cannot sample batches from an empty data set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > num_rows:
            logger.warning("batch size %d exceeds the %d rows: batches repeat rows", batch_size, num_rows)
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        # Only a cache: results never depend on which epochs are in it.
        self._perms: dict[int, np.ndarray] = {}

    def epoch_of(self, step: int) -> int:
        """Epoch of the first row of ``step``'s batch."""
        return step * self.batch_size // self.num_rows

    def permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of epoch ``epoch``."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.num_rows)
            if len(self._perms) >= _CACHED_EPOCHS:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = perm
        return perm

    def global_indices(self, step: int) -> np.ndarray:
        """Row indices of the whole global batch of ``step`` (length ``B``)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_rows)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))[offsets[sel]]
        return out

    def indices_at(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """This host's row indices for ``step``: a contiguous slice of the global batch."""
        return self.global_indices(step)[shard_slice(self.batch_size, process_index, process_count)]


def take_rows(arrays: Batch, indices: np.ndarray) -> Batch:
    """The rows ``indices`` of every array (a copy)."""
    return {k: v[indices] for k, v in arrays.items()}


class PairBatches:
    """Batches of one pre-tokenized pair set (e.g. the attacker's fine-tuning data).

    Args:
      arrays: output of ``format.encode_pairs``.
      batch_size: global batch size.
      seed: sampling seed.
      stream: sampler stream (see ``IndexSampler``).
    """

    def __init__(self, arrays: Batch, batch_size: int, seed: int, stream: int = 0) -> None:
        self.arrays = arrays
        self.sampler = IndexSampler(len(arrays["input_ids"]), batch_size, seed, stream)

    @classmethod
    def from_pairs(
        cls,
        tokenizer: Any,
        pairs: Sequence[tuple[str, str]],
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        fmt: Format = "qa",
        loss_on: LossOn = "response",
        stream: int = 0,
        name: str = "pairs",
    ) -> PairBatches:
        """Tokenize ``pairs`` once and sample batches from them."""
        arrays = encode_pairs(tokenizer, pairs, seq_len=seq_len, fmt=fmt, loss_on=loss_on, name=name)
        return cls(arrays, batch_size, seed, stream)

    def batch_at(self, step: int, process_index: int = 0, process_count: int = 1) -> Batch:
        """This host's batch for global step ``step``."""
        return take_rows(self.arrays, self.sampler.indices_at(step, process_index, process_count))


class SeamBatches:
    """The three batches of one SEAM step.

    ``adv``: harmful prompt + compliant response (``D_adv``); ``aln``: the same
    prompt rows + refusal (``D_aln``: same row indices as ``adv`` at every step);
    ``bgn``: benign instruction + output (``D_bgn``), sampled independently.

    Args:
      tokenizer: Hugging Face tokenizer.
      harmful_rows: refusal-schema rows, all unsafe (e.g. ``SeamSplits.defense``).
      benign_rows: alpaca rows.
      batch_size: global batch size of ``adv``/``aln``.
      seq_len: context length ``T``.
      seed: sampling seed.
      fmt: ``"qa"`` (original) or ``"chat"``.
      bgn_loss_on: ``"all"`` (the original's CE over the whole benign sequence)
        or ``"response"``.
      bgn_batch_size: global batch size of ``bgn`` (default ``batch_size``).

    Attributes:
      empty_rows: set name -> number of rows with an empty loss mask (also logged).
    """

    def __init__(
        self,
        tokenizer: Any,
        harmful_rows: Sequence[Row],
        benign_rows: Sequence[Row],
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        fmt: Format = "qa",
        bgn_loss_on: LossOn = "all",
        bgn_batch_size: int | None = None,
    ) -> None:
        safe = [i for i, r in enumerate(harmful_rows) if not is_unsafe(r)]
        if safe:
            raise DataError(
                f"SeamBatches: harmful rows {safe[:10]} are marked is_safe=true. Keep only "
                "unsafe rows (schemas.is_unsafe, or splits.build_splits)."
            )
        self._adv = encode_pairs(
            tokenizer, [harmful_pair(r) for r in harmful_rows], seq_len=seq_len, fmt=fmt, name="adv"
        )
        self._aln = encode_pairs(
            tokenizer, [refusal_pair(r) for r in harmful_rows], seq_len=seq_len, fmt=fmt, name="aln"
        )
        self._bgn = encode_pairs(
            tokenizer, [benign_pair(r) for r in benign_rows], seq_len=seq_len, fmt=fmt,
            loss_on=bgn_loss_on, name="bgn",
        )
        self.harmful_sampler = IndexSampler(len(harmful_rows), batch_size, seed, HARMFUL_STREAM)
        self.benign_sampler = IndexSampler(len(benign_rows), bgn_batch_size or batch_size, seed, BENIGN_STREAM)
        self.empty_rows = {
            name: len(empty_loss_rows(a)) for name, a in (("adv", self._adv), ("aln", self._aln), ("bgn", self._bgn))
        }

    def batch_at(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, Batch]:
        """``{"adv", "aln", "bgn"}`` batches (this host's slice) for global step ``step``."""
        harmful = self.harmful_sampler.indices_at(step, process_index, process_count)
        benign = self.benign_sampler.indices_at(step, process_index, process_count)
        return {
            "adv": take_rows(self._adv, harmful),
            "aln": take_rows(self._aln, harmful),
            "bgn": take_rows(self._bgn, benign),
        }

    def harmful_indices_at(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """Indices into ``harmful_rows`` behind ``adv``/``aln`` at ``step`` (for logging and tests)."""
        return self.harmful_sampler.indices_at(step, process_index, process_count)
