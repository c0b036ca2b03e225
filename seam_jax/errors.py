"""The project's error types: each says what is wrong and how to fix it."""

from __future__ import annotations

import json
import os
from typing import Any


class SeamError(Exception):
    """Base class for errors that the command line reports without a traceback."""


class ConfigError(SeamError, ValueError):
    """A config value or a model config.json that seam_jax cannot use."""


class DistributedError(SeamError, RuntimeError):
    """Multi-process start-up that failed: the message names the coordinator's address."""


class CorruptFileError(SeamError, ValueError):
    """A file that exists but cannot be parsed: the message names it and the fix."""


def read_json(path: str | os.PathLike, fix: str = "delete it to recompute it, or restore it") -> Any:
    """The parsed JSON of ``path`` (a local path or an ``epath.Path``, ``gs://`` included);
    a CorruptFileError naming the file if it does not parse."""
    from etils import epath

    try:
        with epath.Path(path).open("rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}); {fix}") from None
