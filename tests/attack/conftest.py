"""A tiny attackable model (random 2-layer preset with the offline tokenizer) and attack rows."""

import pytest

from seam_jax.data import harmful_items
from seam_jax.hf.source import load_model


def debug_config(run_dir):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "attack.py"
    spec = importlib.util.spec_from_file_location("attack_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("debug")
    c.run_dir = str(run_dir)
    return c


@pytest.fixture
def debug_cfg():
    """``configs/attack.py:debug`` for a run directory."""
    return debug_config


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return load_model(debug_config(tmp_path_factory.mktemp("m")))


@pytest.fixture(scope="session")
def attack_rows():
    return [h.refusal_row() for h in harmful_items(7, 16)]
