"""--config.defense.name: the choices, the default, and one-line errors."""

from __future__ import annotations

import pytest

from seam_jax import defense
from seam_jax.config import base_config, digest, validate
from seam_jax.errors import ConfigError


def test_default_is_seam_and_keeps_the_seam_digest():
    c = base_config()
    assert c.defense.name == "seam"
    before = digest(c)
    c.defense.booster.lam = 1.0  # another defense's hyperparameter: not SEAM's arithmetic
    assert digest(c) == before
    c.defense.name = "booster"
    assert digest(c) != before


def test_every_defense_is_a_valid_name():
    assert set(defense.NAMES) == {"seam", "none", "booster", "vaccine", "repnoise", "tar"}
    for name in defense.NAMES:
        c = base_config()
        c.defense.name = name
        validate(c)


def test_bad_name_is_one_line_listing_the_choices():
    c = base_config()
    c.defense.name = "boster"
    with pytest.raises(ConfigError) as e:
        validate(c)
    msg = str(e.value)
    assert "\n" not in msg and "boster" in msg
    assert all(n in msg for n in defense.NAMES)


@pytest.mark.parametrize("name,field,value,words", [
    ("booster", "alpha", 0.0, "alpha > 0"),
    ("vaccine", "norm", "row", "global"),
    ("repnoise", "beta", -1.0, ">= 0"),
    ("tar", "adversary_lrs", "2e-6,x", "comma-separated"),
    ("tar", "tr_loss", "kl", "dpo"),
    ("tar", "reference", "model", "base"),
])
def test_bad_hyperparameter_is_one_line(name, field, value, words):
    c = base_config()
    c.defense.name = name
    c.defense[name][field] = value
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert words in str(e.value) and "\n" not in str(e.value)
