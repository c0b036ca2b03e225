"""The few lines every job ends with on stdout: what ran, its key figures, where the outputs are.

``summary_text(config, result, seconds)`` reads what the job returned (and, for SEAM,
the last line of its metrics file); ``main`` prints it after the job. The logs go to
stderr, so stdout holds only these lines::

    seam_jax: job seam done in 22 s
      model preset:debug, 6 steps (estimator hessian_free, alpha 1, beta 1)
      last step: loss 3.72, L_ul -1.99, L_up 6.22, cos -0.511
      harmful refusal rate 0.00 -> 0.25 (4 held-out prompts)
      ...
      outputs: /path/to/run (summary.json, metrics.jsonl, checkpoints/, tensorboard/)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import ml_collections as mlc

from seam_jax.errors import CorruptFileError, read_json

HEADER = "seam_jax: job {job} done in {seconds:.0f} s"


def summary_text(c: mlc.ConfigDict, result: Any, seconds: float) -> str:
    lines = _FORMATTERS.get(str(c.job), _generic)(c, result)
    return "\n".join([HEADER.format(job=c.job, seconds=seconds), *(f"  {l}" for l in lines)])


def _run_dir(c: mlc.ConfigDict) -> pathlib.Path:
    from seam_jax.train.run_dir import resolve

    return resolve(c.run_dir)


def _outputs(where: Any, names: Sequence[str]) -> str:
    from seam_jax.storage import Path

    where = Path(where)  # a local path or gs:// (seam_jax.storage)
    present = [n for n in names if (where / n.rstrip("/")).exists()]
    return f"outputs: {where}" + (f" ({', '.join(present)})" if present else "")


def _seam(c: mlc.ConfigDict, s: Mapping[str, Any]) -> list[str]:
    run_dir = _run_dir(c)
    lines = [f"model {c.model.source}, {c.steps} steps (estimator {c.seam.estimator}, "
             f"alpha {c.seam.alpha:g}, beta {c.seam.beta:g})"]
    metrics = run_dir / "metrics.jsonl"
    last = metrics.read_text().splitlines()[-1:] if metrics.is_file() else []
    if last:
        try:
            m = json.loads(last[0])
        except json.JSONDecodeError as e:  # the same one-line form as errors.read_json
            raise CorruptFileError(f"{metrics}: its last line is not valid JSON ({e}); "
                                   f"rerun the job to rewrite it") from None
        figures = [f"{k} {m[k]:.3g}" for k in ("loss", "L_ul", "L_up", "cos") if k in m]
        lines.append(f"last step ({m.get('step')}): " + ", ".join(figures))
    before, after = s.get("before") or {}, s.get("after") or {}
    for key, label, n in (("harmful_refusal_rate", "harmful refusal rate", "n_harmful"),
                          ("benign_refusal_rate", "benign refusal rate", "n_benign"),
                          ("benign_accuracy", "benign accuracy", "n_benign")):
        if key in after:
            was = f"{before[key]:.2f} -> " if key in before else ""
            lines.append(f"{label} {was}{after[key]:.2f} ({after.get(n, '?')} held-out prompts)")
    if not after:
        lines.append("no behaviour check (eval.enabled=False)")
    lines.append(f"HF checkpoint: {s.get('export_dir')}")
    lines.append(_outputs(run_dir, ["summary.json", "metrics.jsonl", "eval_before.json",
                                    "eval_after.json", "checkpoints/", "tensorboard/"]))
    return lines


def _convert(c: mlc.ConfigDict, out: Any) -> list[str]:
    what = (f"params of the newest checkpoint in {c.export.source}" if c.job == "export"
            else f"model {c.model.source}")
    dtype = f" as {c.export.dtype}" if c.export.dtype else ""
    return [f"{what} written as an HF directory{dtype}", f"outputs: {out}"]


def _generate(c: mlc.ConfigDict, texts: Sequence[str]) -> list[str]:
    return [f"{len(texts)} prompts answered (up to {c.generate.max_new_tokens} new tokens each)",
            _outputs(_run_dir(c), ["generations.json"])]


def _theory(c: mlc.ConfigDict, s: Mapping[str, Any]) -> list[str]:
    return [*s.get("lines", []), _outputs(s.get("run_dir") or _run_dir(c),
                                          ["summary.json", "theorem1.json", "theorem1.csv",
                                           "theorem1.png"])]


def _plan(c: mlc.ConfigDict, r: Mapping[str, Any]) -> list[str]:
    t = r.get("target") or {}
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    lines = [f"model {r.get('model')} ({r.get('params', 0) / 1e6:.1f}M parameters), step "
             f"{r.get('step')}, batch {r.get('batch')}, compiled on {r.get('compiled_on')}"]
    if t:
        lines.append(f"mesh {t.get('mesh')}: peak {gib(t.get('peak_bytes', 0))} per device of "
                     f"{gib(t.get('budget_bytes', 0))} usable -> "
                     f"{'fits' if t.get('fits') else 'does NOT fit'}")
    if "smallest_fsdp" in r:
        lines.append(f"smallest fsdp mesh that fits: {r['smallest_fsdp'] or 'none tried'}")
    lines.append(_outputs(_run_dir(c), ["plan.json"]))
    return lines


def _attack_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        figures = [f"{k} {r[k]:.2f}" for k in sorted(r) if k.startswith(("hs_", "mc_acc", "zs_avg"))
                   and not k.endswith("_frac") and isinstance(r[k], (int, float))]
        out.append(f"{r.get('model')} #{r.get('cell')} ({r.get('method')}/{r.get('optimizer')}/"
                   f"{r.get('n_samples')}, lr {r.get('lr'):g}): " + ", ".join(figures))
    return out


def _attack(c: mlc.ConfigDict, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from seam_jax.storage import Path

    out_dir = Path(c.attack.out_dir or _run_dir(c) / "attacks")
    return [f"{len(rows)} attacked checkpoints", *_attack_rows(rows),
            _outputs(out_dir, ["results.jsonl", "report.md"])]


def _experiment(c: mlc.ConfigDict, s: Mapping[str, Any]) -> list[str]:
    lines = list(s.get("table") or [])
    checked = s.get("criteria")
    if checked:
        failed = sorted({f"{r['criterion'][:2]} (seed {r['seed']})" for r in checked["rows"]
                         if r["held"] is not True})
        lines.append(f"pre-registered criteria: {checked['verdict']}"
                     + (f"; not held: {', '.join(failed)}" if failed else ""))
    compared = s.get("comparison")
    if compared:
        held = sorted({f"{r['arm']} #{r['cell']}" for r in compared["rows"] if r["resists"]})
        lines.append("resisting the attack: " + (", ".join(held) or "none")
                     + "".join(f"; vs {a}: {v}" for a, v in compared["verdicts"].items()))
    lines.append(f"{s.get('n_attacked', '?')} attacked checkpoints; report: {s.get('report')}")
    lines.append(_outputs(_run_dir(c), ["report.md", "experiment_summary.json", "attacks/"]))
    return lines


def _generic(c: mlc.ConfigDict, result: Any) -> list[str]:
    return [_outputs(_run_dir(c), [])]


_FORMATTERS: dict[str, Callable[[mlc.ConfigDict, Any], list[str]]] = {
    "seam": _seam, "convert": _convert, "export": _convert, "generate": _generate,
    "theory": _theory, "plan": _plan, "attack": _attack, "experiment": _experiment,
}
