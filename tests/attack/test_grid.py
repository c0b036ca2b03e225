"""The paper's attack grid, sub-grids, custom grids and their errors."""

import pytest

from seam_jax.attack.grid import GRIDS, PAPER, resolve
from seam_jax.errors import ConfigError


def test_paper_grid_is_the_table():
    rows = [(c.n_samples, c.method, c.optimizer, c.lr) for c in PAPER]
    assert rows == [
        (1000, "full", "adamw", 2e-5), (1000, "full", "adamw", 5e-5), (1000, "full", "adamw", 8e-5),
        (1000, "full", "adamw", 1e-4), (1000, "full", "adamw", 2e-4),
        (10000, "full", "adamw", 5e-5), (10000, "full", "adamw", 1e-4),
        (10000, "lora", "adamw", 5e-5), (10000, "lora", "adamw", 1e-4),
        (10000, "full", "sgd", 5e-5), (10000, "full", "sgd", 1e-4),
    ]
    assert all((c.epochs, c.batch_size, c.weight_decay, c.schedule, c.warmup_ratio)
               == (1.0, 4, 0.01, "cosine", 0.1) for c in PAPER)
    assert PAPER[0].steps == 250 and PAPER[5].steps == 2500  # 1 epoch at batch 4
    assert len(resolve("paper")) == 11 and len(GRIDS["paper_1k"]) == 5


def test_sub_grids():
    assert [c.name for c in resolve("paper", cells="2,5")] == ["2", "5"]
    assert [c.name for c in resolve("paper", lrs="1e-4")] == ["4", "7", "9", "11"]
    small = resolve("paper_1k", lrs="5e-5,2e-4", n_samples=64)
    assert [(c.name, c.n_samples, c.steps) for c in small] == [("2", 64, 16), ("5", 64, 16)]
    custom = resolve("custom", custom="lora/sgd/100/1e-3; full/adamw/8/2e-5")
    assert [(c.method, c.optimizer, c.n_samples, c.lr) for c in custom] == [
        ("lora", "sgd", 100, 1e-3), ("full", "adamw", 8, 2e-5)]


def test_digest_changes_with_the_cell():
    a, b = resolve("paper", cells="2")[0], resolve("paper", cells="2", n_samples=10)[0]
    assert a.digest() != b.digest() and a.digest() == resolve("paper", cells="2")[0].digest()


@pytest.mark.parametrize("kw, match", [
    (dict(grid="papr"), "unknown attack config 'papr'"),
    (dict(grid="paper", cells="12"), "unknown attack cell"),
    (dict(grid="paper", lrs="3e-3"), "keeps no cell"),
    (dict(grid="custom", custom="full/adamw/1000"), "method/optimizer/n_samples/lr"),
    (dict(grid="custom", custom="full/adam/1000/1e-4"), "optimizer='adam'"),
    (dict(grid="custom"), "needs attack.custom"),
])
def test_bad_grids(kw, match):
    with pytest.raises(ConfigError, match=match):
        resolve(**kw)
