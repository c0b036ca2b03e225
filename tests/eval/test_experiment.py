"""Job "experiment": its arms and seeds (fast, no model), and end to end on
configs/experiment.py:debug (random 2-layer model, offline; marked e2e)."""

import importlib.util
import json
import pathlib

import pytest

from seam_jax import config as config_lib
from seam_jax.errors import ConfigError
from seam_jax.train import run_dir as run_dir_lib
from seam_jax.defense.arms import ARMS, arm_overrides, arms_and_seeds
from seam_jax.jobs.experiment import arm_config, seed_config

CFG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "experiment.py"


def debug_config(**experiment):
    spec = importlib.util.spec_from_file_location("experiment_cfg", CFG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("debug")
    for k, v in experiment.items():
        c.experiment[k] = v
    return c


def test_arms_are_a_table_of_overrides(tmp_path):
    c = debug_config()
    assert arms_and_seeds(c) == (["base", "control", "seam"], [0])
    assert ARMS["base"] is None and arm_overrides(c, "base") is None
    control = arm_config(seed_config(c, 0), "control", tmp_path / "control-s0")
    seam = arm_config(seed_config(c, 0), "seam", tmp_path / "seam-s0")
    assert control.seam.beta == 0.0 and seam.seam.beta == c.seam.beta > 0
    assert (control.job, control.run_dir, control.export.dir) == (
        "seam", str(tmp_path / "control-s0"), "")
    # Only beta differs between the two defense runs: the same data, data order and steps.
    flat_c, flat_s = (run_dir_lib.flat(x.to_dict()) for x in (control, seam))
    assert {k for k in flat_c if flat_c[k] != flat_s[k]} == {"seam.beta", "run_dir"}
    assert config_lib.digest(control) != config_lib.digest(seam)


def test_another_arm_name_is_a_defense_name():
    c = debug_config(arms="base,control,seam,booster")
    assert arms_and_seeds(c)[0][-1] == "booster"
    assert arm_overrides(c, "booster") == {"defense.name": "booster"}
    assert arm_overrides(c, "control") == {"seam.beta": 0.0, "defense.name": "seam"}
    with pytest.raises(ConfigError, match="unknown arm 'boostr'"):
        arms_and_seeds(debug_config(arms="base,boostr"))
    with pytest.raises(ConfigError, match="unknown arm 'boostr'") as e:
        arm_overrides(c, "boostr")
    assert "\n" not in str(e.value)


def test_seeds_are_replicates():
    c = debug_config(seeds="0,3")
    assert arms_and_seeds(c)[1] == [0, 3]
    s3 = seed_config(c, 3)
    assert (s3.seed, s3.data.seed) == (3, 3) and (c.seed, c.data.seed) == (0, 0)


@pytest.mark.parametrize("field, value, match", [
    ("arms", "", "experiment.arms is empty"),
    ("arms", "seam,seam", "twice"),
    ("seeds", "0,x", "comma-separated integers"),
    ("seeds", "1,1", "twice"),
])
def test_bad_arms_and_seeds(field, value, match):
    with pytest.raises(ConfigError, match=match):
        arms_and_seeds(debug_config(**{field: value}))


def test_bad_experiment_fields_stop_before_any_work(tmp_path):
    from seam_jax.main import main

    for bad in ("--config.experiment.arms=base,nope", "--config.experiment.seeds=a",
                "--config.experiment.utility_guard=1.5", "--config.attack.eval_every=-1"):
        assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={tmp_path}", bad]) == 2, bad
    assert not (tmp_path / "seed-0").exists()


def _rows(run):
    return [json.loads(l) for l in (run / "attacks" / "results.jsonl").read_text().splitlines()]


@pytest.mark.e2e  # three arms trained/attacked along the way, PCA and the report, twice
def test_experiment_debug_then_resume(tmp_path):
    from seam_jax.eval.harm import KeywordScorer
    from seam_jax.main import main

    run = tmp_path / "run"
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    for f in ("eval_base-s0.json", "eval_control-s0.json", "eval_seam-s0.json", "pca-s0.json",
              "report.md", "report.json", "hs_utility_vs_lr.png", "attack_trajectories.png",
              "gradient_pca.png", "seam-s0/defended-hf/config.json",
              "control-s0/defended-hf/config.json", "seed-0/data"):
        assert (run / f).exists(), f
    rows = _rows(run)
    # 3 arms x cells 2 and 5 x steps 2 and 4 (4-step attacks, attack.eval_every = 2).
    assert sorted((r["model"], r["cell"], r["step"]) for r in rows) == sorted(
        (m, c, s) for m in ("base-s0", "control-s0", "seam-s0") for c in ("2", "5") for s in (2, 4))
    # Each row's figures are those of its own saved outputs: HS is the keyword judge's mean
    # over exactly its generations (one per test prompt, harm.n_prompts = 4 in the debug
    # config), scored again here; MC accuracy counts right answers of utility.n_mc = 8.
    keyword = KeywordScorer()
    for r in rows:
        gens = r["generations"]
        assert len(gens) == 4 and len({g["prompt"] for g in gens}) == 4
        scores = keyword.score([g["prompt"] for g in gens], [g["response"] for g in gens])
        assert r["hs_keyword"] == sum(scores) / 4, r["cell"]
        assert r["mc_acc"] * 8 == round(r["mc_acc"] * 8) and 0 <= r["mc_acc"] <= 1
        assert r["harmful_loss"] > 0 and len(r["harmful_loss_ci"]) == 2
    # The control arm is the SEAM run with beta 0: its run.json says so; the two trained
    # different weights.
    assert json.loads((run / "control-s0" / "run.json").read_text())["config"]["seam.beta"] == 0.0
    assert (json.loads((run / "eval_control-s0.json").read_text())["measured_for"]["model"]
            != json.loads((run / "eval_seam-s0.json").read_text())["measured_for"]["model"])
    report = (run / "report.md").read_text()
    assert "| seam-s0 | #5 full/adamw/8 | 2e-04 | 4/4 |" in report
    assert "| seam-s0 | #5 full/adamw/8 | 2e-04 | 2/4 |" in report
    for m in ("base-s0", "control-s0", "seam-s0"):
        assert f"\n| {m} | " in report.split("## Before any attack")[0], m  # worst-case lines
    # With base, control and seam, the pre-registered criteria are checked, each seed's
    # four in the report and the summary, and stdout's table has a line per model.
    summary = json.loads((run / "experiment_summary.json").read_text())
    crit = summary["criteria"]
    assert [r["criterion"][:2] for r in crit["rows"]] == ["C0", "C1", "C2", "C3"]
    assert crit["verdict"] in ("shown", "refuted", "inconclusive")
    assert "## Pre-registered criteria" in report and crit["verdict"] in report
    assert [ln.split()[0] for ln in summary["table"][1:]] == ["base-s0", "control-s0", "seam-s0"]
    # A rerun reads every stage back: no new result rows.
    n = len(rows)
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    assert len(_rows(run)) == n


@pytest.mark.e2e  # two seeds of two arms
def test_experiment_two_seeds(tmp_path):
    from seam_jax.main import main

    run = tmp_path / "run"
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}",
                 "--config.experiment.arms=base,seam", "--config.experiment.seeds=0,1",
                 "--config.attack.cells=5"]) == 0
    rows = _rows(run)
    assert sorted({r["model"] for r in rows}) == ["base-s0", "base-s1", "seam-s0", "seam-s1"]
    # A seed is a replicate: its own data (other test prompts) and its own defense.
    prompts = {r["model"]: [g["prompt"] for g in r["generations"]] for r in rows}
    assert prompts["seam-s0"] == prompts["base-s0"] != prompts["seam-s1"] == prompts["base-s1"]
    summary = json.loads((run / "experiment_summary.json").read_text())
    assert sorted(summary["worst_case"]) == ["base-s0", "base-s1", "seam-s0", "seam-s1"]
    assert summary["seeds"] == [0, 1]
