"""The launch scripts parse (``bash -n``), document their command, and name configs that load.

Each script's header comment shows how to run it; every ``configs/*.py`` it names must
exist and load together with the literal ``--config.*`` overrides the script passes,
so a renamed config or field breaks this test rather than a pod's first minute.
"""

import pathlib
import re
import subprocess

import pytest

from seam_jax.main import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = {"tpu_pod.sh": "bash launch/tpu_pod.sh", "slurm_gpu.sbatch": "sbatch launch/slurm_gpu.sbatch",
           "single_host.sh": "bash launch/single_host.sh"}


def test_every_script_is_covered():
    assert sorted(p.name for p in (ROOT / "launch").iterdir()) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_parses_and_names_existing_configs(name):
    path = ROOT / "launch" / name
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert SCRIPTS[name] in header, f"{name}: the header comment lacks its command"
    configs = sorted(set(re.findall(r"configs/[\w.\-]+\.py", text)))
    assert configs, f"{name} names no config"
    # Literal overrides of the command itself (not the placeholders of the examples).
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    overrides = sorted(set(re.findall(r"--config\.[\w.]+=[\w.\-]+", body)))
    for cfg in configs:
        assert (ROOT / cfg).is_file(), f"{name} names {cfg}, which does not exist"
        parse(["seam_jax", f"--config={ROOT / cfg}", *overrides])
