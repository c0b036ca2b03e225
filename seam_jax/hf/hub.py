"""A Hugging Face hub id as a local HF directory: the one hub resolver of seam_jax.

A snapshot already in the local HF cache is used first (that needs no network). Else,
when the hub is allowed (``allow_hub`` and not ``HF_HUB_OFFLINE``) and answers within
``HUB_PROBE_TIMEOUT`` seconds, the snapshot is downloaded. Either way the snapshot must
be complete (``config.json`` and safetensors weights); anything else raises one
``ConversionError`` that says which way failed and what to do.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import urllib.error
import urllib.request

from seam_jax.hf.errors import ConversionError
from seam_jax.hf.files import is_hf_dir

log = logging.getLogger(__name__)

# The files of a model repository that loading needs: configs, safetensors weights and the
# tokenizer (fast, sentencepiece and BPE vocabularies, chat template). PyTorch .bin weights and
# READMEs are left on the hub.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
# Seconds: long enough for a distant hub to answer, short enough that an offline machine
# falls back without a noticeable wait.
HUB_PROBE_TIMEOUT = 5.0

_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks huggingface_hub to stay off the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_reachable(hub_id: str, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the hub answers an HTTP request within ``timeout`` seconds; never blocks longer.

    Any HTTP answer counts, even an error status; no answer (DNS failure, refused or timed out
    connection) does not. The request runs in a daemon thread because a DNS lookup is not bound
    by the socket timeout.
    """
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(f"{endpoint}/api/models/{hub_id}", timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except Exception:  # URLError, timeouts, resets
            result.append(False)

    thread = threading.Thread(target=probe, name="seam-jax-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def looks_like_hub_id(text: str) -> bool:
    """``owner/name``, not a relative or absolute path."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def hub_snapshot(hub_id: str, *, allow_hub: bool = True) -> pathlib.Path:
    """A complete local snapshot of ``hub_id`` (see the module docstring)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError(f"{hub_id!r} is a hub id, but huggingface_hub is not installed; "
                              f"pip install huggingface_hub, or pass a local path") from None
    try:
        local = pathlib.Path(snapshot_download(hub_id, allow_patterns=HUB_PATTERNS,
                                               local_files_only=True))
        if is_hf_dir(local):
            log.info("%s: the snapshot in the local Hugging Face cache at %s", hub_id, local)
            return local
    except Exception:  # not cached (the exception type varies by huggingface_hub version)
        pass
    if not allow_hub or not hub_reachable(hub_id):
        raise ConversionError(
            f"{hub_id!r} is not a local directory, not in the local HF cache, and the hub is "
            f"disabled or unreachable (HF_HUB_OFFLINE, allow_hub=False, or no network); "
            f"download it first or pass a local path")
    try:
        local = pathlib.Path(snapshot_download(hub_id, allow_patterns=HUB_PATTERNS,
                                               etag_timeout=HUB_PROBE_TIMEOUT))
    except Exception as e:  # the hub's errors vary by version; report them all the same way
        raise ConversionError(f"could not fetch {hub_id!r} from the Hugging Face hub: {e}") from e
    if not is_hf_dir(local):
        raise ConversionError(f"the hub snapshot of {hub_id!r} at {local} has no config.json or no "
                              f"safetensors weights; seam_jax reads safetensors checkpoints only")
    log.info("%s: downloaded from the Hugging Face hub into %s", hub_id, local)
    return local
