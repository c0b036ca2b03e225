"""Every config file loads, locks, validates, and its docstring gives its command."""

import pathlib

import pytest

from seam_jax.config import validate
from seam_jax.main import UsageError, parse

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_is_runnable(path):
    text = path.read_text()
    assert "python -m seam_jax.main" in text.split('"""')[1], f"{path.name}: docstring lacks its command"
    c = parse(["seam_jax", f"--config={path}"])
    validate(c)
    with pytest.raises(AttributeError):
        c.not_a_field = 1  # locked


def test_override_and_typo():
    c = parse(["seam_jax", "--config.seam.beta=0.5"])
    assert c.seam.beta == 0.5 and c.model.source == "default"
    with pytest.raises(UsageError, match="Did you mean"):
        parse(["seam_jax", "--config.seam.betaa=0.5"])


def test_cpu_presets_checkpoint_synchronously_and_attacks_follow_the_run():
    from seam_jax.config import base_config
    from seam_jax.jobs.attack import attack_checkpoint

    base = base_config()  # what accelerator runs start from
    assert base.checkpoint.use_async and attack_checkpoint(base).use_async
    repo = pathlib.Path(__file__).resolve().parents[1]
    for arg in ("", ":seam"):
        c = parse(["seam_jax", f"--config={repo / 'configs' / 'default.py'}{arg}"])
        assert c.checkpoint.use_async is False, arg
        ck = attack_checkpoint(c)
        assert (ck.use_async, ck.every, ck.keep) == (False, c.attack.checkpoint_every, 1), arg
