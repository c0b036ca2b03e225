"""What a run directory is, and who is using it.

A run directory (``run_dir``) holds one training run: its checkpoints, metrics, cached
stage results and export. Three things keep a rerun from mixing runs up:

* **The manifest** ``RUN/run.json``, written at the first start: the config fields that
  change the arithmetic (``ARITHMETIC``: the model, data, SEAM, steps, optimiser and
  seed sections, which hold the batch sizes and the data seed, less ``NOT_ARITHMETIC``;
  not ``eval``, ``export``, ``checkpoint``, ``harm``, logging or ``mesh``, which change
  where things go, how often they are saved or what is measured, not the trained
  weights; a resumed run on another mesh is the same run), their digest, the
  model's identity (architecture, array shapes and a hash of the initial weights) and the
  data's (a hash of the rows and of the first step's tokens). A rerun whose fields or
  identities differ is refused with one line naming them, unless
  ``--config.resume=force`` asks to continue the checkpoints anyway (the manifest then
  records the new values and what was forced).
* **The lock** ``RUN/.lock``: an advisory ``flock`` held for the run, so that a second
  run on the same directory refuses with one line instead of training beside the first.
  A run directory in a bucket (``gs://``) cannot hold an ``flock``: there the lock is
  skipped with one warning line (``seam_jax.storage``).
* **Keyed caches** (``cached``): a stage result (``eval_before.json`` and the like) is
  stored with the key of what it measured (its ``measured_for`` field) (the model's weight hash and the config it was
  measured with) and reused only for that key; another key recomputes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax import storage
from seam_jax.errors import SeamError, read_json

log = logging.getLogger(__name__)

MANIFEST = "run.json"
LOCK = ".lock"
# Config sections (and top-level fields) that change the trained weights.
ARITHMETIC = ("model", "data", "seam", "steps", "optim", "seed")
# Fields of those sections that say where to find things, or size what is only measured
# (the held-out test prompts, the attack split, the held-out geometry pairs). What they
# lead to is still checked: the weights' hash identifies the model, the rows' and the
# first step's hashes the training data.
NOT_ARITHMETIC = ("model.local_path", "model.allow_hub", "model.tokenizer", "data.test",
                  "data.test_split", "data.n_test", "data.n_attack", "seam.heldout_pairs")


class RunDirError(SeamError):
    """A run directory that belongs to another run, or is in use by one."""


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"seam.beta": 1.0, ...}`` of a nested dict (tuples kept as lists, for JSON)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k in sorted(d):
            out.update(flat(d[k], f"{prefix}{k}."))
        return out
    if isinstance(d, tuple):
        d = list(d)
    return {prefix[:-1]: d}


def arithmetic_config(c: Any) -> dict[str, Any]:
    """The fields of config ``c`` that change the arithmetic (``ARITHMETIC``), flattened."""
    full = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    fields = flat({k: full[k] for k in ARITHMETIC if k in full})
    defense = full.get("defense") or {}
    if defense.get("name", "seam") != "seam":  # another defense: its name and its section
        name = defense["name"]
        fields.update(flat({"name": name, name: defense.get(name, {})}, "defense."))
    if defense.get("trainable", "full") != "full":  # LoRA: what is trained, and its adapters
        fields.update(flat({k: v for k, v in defense.items()
                            if k == "trainable" or k.startswith("lora_")}, "defense."))
    return {k: v for k, v in fields.items() if k not in NOT_ARITHMETIC}


def digest_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- where a run directory is ------------------------------------------------------------

# The one conversion of ``run_dir`` (and any other output location) into a path: an
# ``epath.Path``, local or ``gs://`` (seam_jax.storage).
resolve = storage.resolve


# --- identities -------------------------------------------------------------------------

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_hash(x: jax.Array) -> jax.Array:
    """Two 32-bit hashes of an array's bits and positions (exact integer arithmetic, so
    the same on any mesh or device count)."""
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 8:
        u = jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    else:
        u = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
    i = jnp.arange(u.size, dtype=jnp.uint32)
    out = []
    for a, b in ((0x9E3779B9, 0x85EBCA6B), (0x7FEB352D, 0xC2B2AE35)):
        h = (u ^ (i * jnp.uint32(a))) * jnp.uint32(b)
        h = h ^ (h >> 15)
        out.append(jnp.sum(h, dtype=jnp.uint32))
    return jnp.stack(out)


_tree_hash = jax.jit(lambda tree: jax.tree.map(_leaf_hash, tree))


def fingerprint(tree: Any) -> str:
    """A hash of every array of ``tree`` (names, shapes, dtypes and bits), computed where the
    arrays are (sharded ones included) and read back as a few integers."""
    from seam_jax.train.checkpoint import array_specs

    hashes = jax.device_get(_tree_hash(tree))
    flat_h = [np.asarray(h).tolist() for h in jax.tree.leaves(hashes)]
    return digest_of([sorted(array_specs(tree).items()), flat_h])


def model_identity(cfg: Any, params: Any) -> dict[str, Any]:
    """The model's architecture (its config), its array shapes and the hash of its weights."""
    from seam_jax.train.checkpoint import array_specs

    arch = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    specs = array_specs(params)
    return {"architecture": json.loads(json.dumps(arch, sort_keys=True, default=str)),
            "n_arrays": len(specs), "n_params": int(sum(int(np.prod(s)) for s, _ in specs.values())),
            "shapes": digest_of(sorted(specs.items())), "weights": fingerprint(params)}


def data_identity(rows: dict[str, Any], first_batch: Any) -> dict[str, Any]:
    """Hashes of the training rows (per set) and of the first step's arrays (which fixes the
    tokenizer, the format and the context length)."""
    leaves = jax.tree_util.tree_flatten_with_path(first_batch)[0]
    h = hashlib.sha256()
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return {**{f"rows.{k}": digest_of(v) for k, v in sorted(rows.items())},
            "first_batch": h.hexdigest()[:16]}


def tokenizer_identity(tok: Any) -> str:
    """A hash of a tokenizer's vocabulary (its class name when it has none to read)."""
    try:
        vocab = tok.get_vocab()
    except Exception:  # a tokenizer without get_vocab: the class is all we know
        return type(tok).__name__
    return digest_of(sorted(vocab.items()))


# --- the manifest -----------------------------------------------------------------------

def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    old_f, new_f = flat(old), flat(new)
    out = []
    for k in sorted(set(old_f) | set(new_f)):
        a, b = old_f.get(k, "<unset>"), new_f.get(k, "<unset>")
        if a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def _listed(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


@dataclasses.dataclass
class Manifest:
    """The run directory's ``run.json`` as this run sees it (``open``, then ``settle``)."""

    path: storage.Path
    job: str
    config: dict[str, Any]
    force: bool
    saved: dict[str, Any] | None

    @classmethod
    def open(cls, run_dir: str | os.PathLike, c: Any, job: str) -> "Manifest":
        """Read ``RUN/run.json`` and compare its config fields with ``c``'s: a difference is
        refused (``RunDirError``) unless ``c.resume == "force"``. Nothing is written yet."""
        path = storage.Path(run_dir) / MANIFEST
        saved = read_json(path, fix=f"move it away (the run directory then counts as new) or "
                                    f"choose a new --config.run_dir") if path.is_file() else None
        m = cls(path, job, arithmetic_config(c), str(getattr(c, "resume", "auto")) == "force", saved)
        if saved is not None:
            m._check(_differences(saved.get("config", {}), m.config))
        return m

    def _check(self, diffs: list[str]) -> list[str]:
        if diffs and not self.force:
            raise RunDirError(
                f"{self.path.parent} holds another run ({_listed(diffs)}; its {MANIFEST} has the "
                f"old values): choose a new --config.run_dir, or pass --config.resume=force to "
                f"continue its checkpoints with this config")
        if diffs:
            log.warning("resume=force: continuing the run in %s despite %s", self.path.parent,
                        _listed(diffs, 20))
        return diffs

    def settle(self, *, model: dict[str, Any], data: dict[str, Any]) -> list[str]:
        """Compare the model's and data's identities with the manifest's (refused as in
        ``open``), then write the manifest if it is new or forced. Returns what was forced."""
        diffs: list[str] = []
        if self.saved is not None:
            diffs = _differences(self.saved.get("config", {}), self.config)
            diffs += _differences(self.saved.get("model", {}), model, "model identity: ")
            diffs += _differences(self.saved.get("data", {}), data, "data identity: ")
            self._check(diffs)
            if not diffs:
                return []
        record = {"format": 1, "job": self.job,
                  "created": (self.saved or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
                  "config_digest": digest_of(self.config), "config": self.config,
                  "model": model, "data": data,
                  "forced": [*(self.saved or {}).get("forced", []),
                             *([{"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "differences": diffs}]
                               if diffs else [])]}
        _write_json(self.path, record)
        return diffs


def _write_json(path: storage.Path, value: Any) -> None:
    """Write ``value`` as JSON whole or not at all (``storage.write_text``: locally a
    temporary file and a rename, in a bucket one object). In a multi-process job only
    process 0 writes (the processes share the run directory)."""
    if jax.process_index() != 0:
        return
    storage.write_text(path, json.dumps(value, indent=1, default=str))


# --- keyed caches -----------------------------------------------------------------------

def cached(path: str | os.PathLike, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``'s value, stored in ``path`` with the key of what it measured (a dict
    value keeps its own fields and gains ``"measured_for": key``; any other value is
    stored as ``{"measured_for": key, "cached_value": value}``) and read back only for the
    same ``key``; another key, or a file without one, recomputes and replaces it. A
    corrupt file is a one-line error."""
    path = storage.Path(path)
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    if path.is_file():
        stored = read_json(path)  # a corrupt one is named, not a bare JSONDecodeError
        old = stored.get("measured_for") if isinstance(stored, dict) else None
        if old == key:
            if set(stored) == {"measured_for", "cached_value"}:
                return stored["cached_value"]
            return {k: v for k, v in stored.items() if k != "measured_for"}
        log.info("%s was measured for something else (%s); measuring again", path,
                 _listed(_differences(old, key)) if isinstance(old, dict) else "no key")
    value = compute()
    record = ({**value, "measured_for": key} if isinstance(value, dict)
              else {"measured_for": key, "cached_value": value})
    _write_json(path, record)
    return value


# --- the lock ---------------------------------------------------------------------------

_held: dict[str, Any] = {}  # resolved run_dir -> its open, locked lock file (None: a bucket)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the advisory lock ``RUN/.lock`` for the block; ``RunDirError`` with one line if
    another process holds it. Re-entrant within a process (a job and its training loop
    take it both). In a multi-process job only process 0 takes it (the processes share
    the directory). A run directory in a bucket holds no lock: one warning line says so."""
    if jax.process_index() != 0:
        yield
        return
    d = resolve(run_dir)
    name = str(d)
    if name in _held:  # this process holds it already (an outer block releases it)
        yield
        return
    if not storage.is_local(d):
        log.warning("%s is in a bucket, where an flock cannot be held: no lock is taken, so "
                    "make sure no other run uses this run_dir meanwhile", d)
        _held[name] = None
        try:
            yield
        finally:
            del _held[name]
        return
    d.mkdir(parents=True, exist_ok=True)
    f = open(d / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            f.close()
            raise
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirError(f"{d} is in use by another run ({holder} holds {d / LOCK}); wait for "
                          f"it to finish, or choose another --config.run_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    f.flush()
    _held[name] = f
    try:
        yield
    finally:
        del _held[name]
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
