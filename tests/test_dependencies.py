"""Imports run one way: jobs -> domain -> core -> base -> foundation (an AST walk, no imports).

    rank 4  jobs, main, config               the command line, its config, its jobs
    rank 3  attack, eval, theory, defense    what is done with a model
    rank 2  seam, train, parallel            the training machinery
    rank 1  model, hf, data                  the model, its files, its data
    rank 0  errors, tree, storage, memory,   neutral: import nothing of seam_jax above them
            __init__

A module may import seam_jax modules of its own rank or below. Every import counts:
``import seam_jax.x``, ``from seam_jax.x import y``, ``from seam_jax import x``, relative
imports, and ``importlib.import_module`` / ``__import__`` of a string literal, at module
level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "seam_jax"

RANKS = {
    "jobs": 4, "main": 4, "config": 4,
    "attack": 3, "eval": 3, "theory": 3, "defense": 3,
    "seam": 2, "train": 2, "parallel": 2,
    "model": 1, "hf": 1, "data": 1,
    "errors": 0, "tree": 0, "storage": 0, "memory": 0, "__init__": 0,
}
NAMES = {4: "jobs", 3: "domain", 2: "core", 1: "base", 0: "foundation"}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str | None:
    if level == 0:
        return module
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(path: pathlib.Path, root: pathlib.Path = PKG) -> list[tuple[int, str]]:
    """(line, module) for every seam_jax module that ``path`` imports, in any form."""
    importer = _module_name(path, root)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, importer, is_package)
            if base:
                out.append((node.lineno, base))
                # ``from seam_jax import jobs`` imports the subpackage seam_jax.jobs.
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in ("import_module", "__import__") and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in out if m == "seam_jax" or m.startswith("seam_jax.")]


def rank_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself: its __init__
    return RANKS.get(parts[1])


def violations(root: pathlib.Path = PKG) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        me = _module_name(path, root)
        mine = rank_of(me) if me != "seam_jax" else 0
        if mine is None:
            found.append(f"{path.relative_to(root.parent)}: seam_jax.{me.split('.')[1]} has no layer; "
                         "add it to RANKS in tests/test_dependencies.py")
            continue
        seen = set()
        for line, target in imported_modules(path, root):
            theirs = rank_of(target)
            if theirs is None:
                continue  # a name imported from the package root, e.g. __version__
            key = (line, target.split(".")[:2][-1])  # one report per import of one subpackage
            if theirs > mine and key not in seen:
                seen.add(key)
                found.append(f"{path.relative_to(root.parent)}:{line} ({NAMES[mine]}) imports "
                             f"{target} ({NAMES[theirs]}): imports must run jobs -> domain -> core "
                             "-> base -> foundation")
    return found


def test_no_module_outside_the_jobs_imports_the_jobs():
    bad = [v for v in violations() if any(f"imports seam_jax.{m}" in v for m in ("jobs", "main", "config"))]
    assert not bad, "\n".join(bad)


def test_imports_follow_the_layers():
    bad = violations()
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("line", [
    "from seam_jax.jobs.common import load_model",
    "import seam_jax.jobs.convert",
    "from seam_jax import jobs",
    "from ..jobs import convert",
    "importlib.import_module('seam_jax.jobs.seam')",
])
def test_every_import_form_is_caught(tmp_path, line):
    """A domain module importing the jobs, in each form, is reported (the walk can fail)."""
    (tmp_path / "seam_jax" / "eval").mkdir(parents=True)
    (tmp_path / "seam_jax" / "__init__.py").write_text("")
    (tmp_path / "seam_jax" / "eval" / "__init__.py").write_text("")
    (tmp_path / "seam_jax" / "eval" / "x.py").write_text(f"import importlib\n\n\ndef f():\n    {line}\n")
    found = violations(tmp_path / "seam_jax")
    assert len(found) == 1 and "seam_jax/eval/x.py:5 (domain) imports seam_jax.jobs" in found[0], found
