"""The experiment's arms: a name -> the config overrides of its defense run.

``base`` is the model as loaded (no defense run), ``control`` SEAM without its L_sd term
(``seam.beta=0``), ``seam`` the config's SEAM; any other arm is a defense of the
registry (``defense.name=<arm>``). Every arm of a seed shares that seed's data, batch
order and attacks (``jobs.experiment``).
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from seam_jax.defense import NAMES
from seam_jax.errors import ConfigError

ARMS: dict[str, dict[str, Any] | None] = {
    "base": None,                      # the untrained model
    "control": {"seam.beta": 0.0},     # L_ul + alpha L_up: SEAM without its L_sd term
    "seam": {},                        # the config's SEAM
}


def _names(text: Any, what: str) -> list[str]:
    if isinstance(text, (list, tuple)):
        items = [str(x).strip() for x in text]
    else:
        items = [x.strip() for x in str(text).split(",")]
    items = [x for x in items if x]
    if not items:
        raise ConfigError(f"{what} is empty; give a comma-separated list, e.g. "
                          f"{'base,control,seam' if what == 'experiment.arms' else '0,1'}")
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise ConfigError(f"{what} lists {dup} twice; give each once")
    return items


def arm_overrides(c: mlc.ConfigDict, arm: str) -> dict[str, Any] | None:
    """The config overrides of ``arm``'s defense run, None for ``base``; ``control`` and
    ``seam`` train ``defense.name=seam``, any other arm name is a ``defense.name``."""
    if arm in ARMS:
        over = ARMS[arm]
        return None if over is None else {**over, "defense.name": "seam"}
    if arm not in NAMES:
        raise ConfigError(f"experiment.arms: unknown arm {arm!r}; choose from {list(ARMS)} or a "
                          f"defense.name of {list(NAMES)}")
    return {"defense.name": arm}


def arms_and_seeds(c: mlc.ConfigDict) -> tuple[list[str], list[int]]:
    """``experiment.arms`` (each checked by ``arm_overrides``) and ``experiment.seeds``."""
    arms = _names(c.experiment.arms, "experiment.arms")
    for arm in arms:
        arm_overrides(c, arm)
    seeds = []
    for x in _names(c.experiment.seeds, "experiment.seeds"):
        try:
            seeds.append(int(x))
        except ValueError:
            raise ConfigError(f"experiment.seeds has {x!r}; give comma-separated integers, "
                              f"e.g. 0,1") from None
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"experiment.seeds={c.experiment.seeds!r} repeats a seed")
    return arms, seeds
