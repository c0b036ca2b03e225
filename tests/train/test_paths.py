"""Where a run directory is (``train.run_dir.resolve``, i.e. ``seam_jax.storage.resolve``,
the one place a job turns ``run_dir`` into a path), and the traceback behind a one-line
error kept in the run directory."""

import os
import pathlib

import pytest

from seam_jax.errors import ConfigError
from seam_jax.main import ERROR_LOG, main
from seam_jax.train.run_dir import resolve

REPO = pathlib.Path(__file__).resolve().parents[2]
DEBUG = [f"--config={REPO / 'configs/debug.py'}", "--config.eval.enabled=False"]


def test_resolve_local_paths_and_file_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve("runs/a") == tmp_path / "runs" / "a"
    assert resolve("~/r") == tmp_path / "home" / "r"
    assert resolve(f"file://{tmp_path}/x/../y") == tmp_path / "y"
    assert resolve(pathlib.Path("b")) == tmp_path / "b"
    with pytest.raises(ConfigError, match=r"file:///absolute/path"):
        resolve("file://otherhost/p")


@pytest.mark.parametrize("url", ["s3://bucket/run", "memory://run", "gs:///run"])
def test_unsupported_run_dir_url_is_one_line_and_no_local_folder(tmp_path, monkeypatch, capsys, url):
    # Before: gs://bucket/run became a local folder named "gs:" and the run went there. Now
    # gs:// is a bucket (tests/train/test_object_storage.py); other schemes are refused.
    monkeypatch.chdir(tmp_path)
    rc = main(["seam_jax", *DEBUG, f"--config.run_dir={url}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    scheme = url.split("://")[0]
    want = ("name the bucket, gs://bucket/path" if scheme == "gs" else
            f"{scheme}:// is not supported (Orbax writes checkpoints to local paths and gs:// only)")
    assert err[0] == f"seam_jax: error: ConfigError: run_dir='{url}': {want}" + (
        "" if scheme == "gs" else "; give gs://bucket/path, or mount the storage and give its "
                                  "local path"), err[0]
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_export_dir_on_unsupported_storage_is_refused_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["seam_jax", *DEBUG, f"--config.run_dir={tmp_path / 'run'}",
               "--config.export.dir=s3://bucket/export"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "export.dir='s3://bucket/export': s3:// is not supported" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "s3:").exists()


def test_one_line_error_keeps_its_traceback_in_the_run_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{not json")
    rc = main(["seam_jax", *DEBUG, f"--config.run_dir={run_dir}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and f"error: CorruptFileError: {run_dir / 'run.json'} is not valid JSON" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    log = (run_dir / ERROR_LOG).read_text()
    assert "Traceback (most recent call last)" in log and "CorruptFileError" in log
    assert f"pid {os.getpid()}: CorruptFileError: {run_dir / 'run.json'} is not valid" in log
