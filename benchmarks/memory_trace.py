"""Resident memory of a command's process tree over time, cut into the stages its log names.

    python -m benchmarks.memory_trace --out runs/memtrace -- python -m seam_jax.main
    python -m benchmarks.memory_trace --out DIR --marker 'loading=load' -- CMD ARGS...

Runs the command (its output passes through, and is kept in ``DIR/log.txt``), samples the
summed RSS of the process and all its descendants every ``--interval`` seconds (psutil),
and timestamps each output line. A stage starts at the first line matching its marker (a
regular expression) and ends where the next stage that appears starts; the first stage
starts with the command. The default markers (``SEAM_MARKERS``) are the SEAM job's log
lines (``seam_jax/jobs/seam.py``, ``train/loop.py``'s progress bar, ``hf/export.py``);
``--marker REGEX=NAME`` (repeatable) replaces them. Writes:

- ``DIR/rss.csv``: ``t_s, rss_mb, processes, stage`` per sample;
- ``DIR/stages.json``: the markers seen (time and line), each stage's start, end, peak
  RSS and when, the overall peak, the command's exit code, and ``ru_maxrss_children_mb``
  (the kernel's peak RSS of the largest finished descendant, which catches a peak shorter
  than the sampling interval; the samples sum the whole tree);
- ``DIR/rss.png``: RSS over time with the stages shaded;

and prints the per-stage peak table. Exits with the command's exit code.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import threading
import time
from typing import Any

# The first stage, from the command's start to the first marker: START, or SEAM_START
# under the SEAM markers.
START = "start"
SEAM_START = "start, imports, model load"
# (regex, stage that starts at the first matching line), for ``python -m seam_jax.main``
# (job seam).
SEAM_MARKERS: list[tuple[str, str]] = [
    (r"seam_jax\.hf\.source.*model: |\bmodel: .*parameters\)", "data and batches"),
    (r"measuring the base model", "base evaluation, sd check, held-out geometry"),
    (r"held-out geometry at step 0:", "step setup"),
    (r"SEAM:\s+0%", "compile and first step"),  # the progress bar (config progress=True)
    (r"SEAM:\s+\d+%.*\b[1-9]\d*/\d+", "steps"),
    (r"held-out geometry at step [1-9]\d*:", "export"),
    (r"exported HF checkpoint", "final evaluation"),
    (r"behaviour, with 95%", "summary"),
    (r"SEAM done in", "exit"),
]


def parse_marker(text: str) -> tuple[str, str]:
    regex, sep, name = text.rpartition("=")
    if not sep or not regex or not name:
        raise SystemExit(f"memory_trace: --marker {text!r}: give REGEX=NAME")
    try:
        re.compile(regex)
    except re.error as e:
        raise SystemExit(f"memory_trace: --marker {text!r}: bad regular expression ({e})") from None
    return regex, name


class Trace:
    """Samples and lines of one command run (``run``)."""

    def __init__(self, markers: list[tuple[str, str]], first: str = START) -> None:
        self.first = first
        self.markers = [(re.compile(r), n) for r, n in markers]
        self.seen: list[dict[str, Any]] = []  # {"t", "stage", "line"}, in order of appearance
        self.samples: list[tuple[float, float, int]] = []  # (t, rss_mb, processes)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        t = time.monotonic() - self.t0
        with self.lock:
            done = {m["stage"] for m in self.seen}
            for regex, name in self.markers:
                if name not in done and regex.search(text):
                    self.seen.append({"t": t, "stage": name, "line": text.strip()[:200]})
                    break

    def stages(self, end: float) -> list[dict[str, Any]]:
        """Each stage's span and peak (stages in the order their markers appeared)."""
        starts = [{"stage": self.first, "t": 0.0}] + sorted(self.seen, key=lambda m: m["t"])
        out = []
        for i, s in enumerate(starts):
            stop = starts[i + 1]["t"] if i + 1 < len(starts) else end
            inside = [(t, r) for t, r, _ in self.samples if s["t"] <= t < stop] or \
                [(t, r) for t, r, _ in self.samples if t <= stop][-1:]
            t_peak, peak = max(inside, key=lambda x: x[1]) if inside else (None, None)
            out.append({"stage": s["stage"], "start_s": s["t"], "end_s": stop,
                        "peak_mb": peak, "t_peak_s": t_peak})
        return out

    def stage_at(self, t: float, stages: list[dict[str, Any]]) -> str:
        for s in stages:
            if s["start_s"] <= t < s["end_s"]:
                return s["stage"]
        return stages[-1]["stage"]


def _tree_rss(proc: Any) -> tuple[float, int]:
    import psutil

    total, n = 0, 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0, 0
    for p in procs:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.Error:  # exited between listing and reading
            pass
    return total / 2**20, n


def _pump(stream: Any, sink: Any, trace: Trace, log: Any, log_lock: threading.Lock) -> None:
    """Copy ``stream`` to ``sink`` and the log, handing each line (split at \\n or \\r) to the trace."""
    buf = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        sink.buffer.write(chunk)
        sink.flush()
        with log_lock:
            log.write(chunk)
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        # The unterminated rest too: a progress bar's line ends only at its next redraw's
        # \r (seconds later), so it is read now; a marker fires once, so reading it again
        # when it completes changes nothing.
        for ln in lines + [buf]:
            if ln.strip():
                trace.line(ln.decode("utf-8", "replace"))


def run(cmd: list[str], out: pathlib.Path, markers: list[tuple[str, str]],
        interval: float = 0.2, first: str = START) -> dict[str, Any]:
    """Run ``cmd`` under the trace; write ``rss.csv``, ``stages.json``, ``rss.png`` in ``out``."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    trace = Trace(markers, first)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines arrive when printed
    log_lock = threading.Lock()
    with open(out / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        ps = psutil.Process(proc.pid)
        pumps = [threading.Thread(target=_pump, args=(s, k, trace, log, log_lock), daemon=True)
                 for s, k in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
        for th in pumps:
            th.start()
        try:
            while proc.poll() is None:
                rss, n = _tree_rss(ps)
                if n:
                    trace.samples.append((time.monotonic() - trace.t0, rss, n))
                time.sleep(interval)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
        for th in pumps:
            th.join(timeout=10)
    end = time.monotonic() - trace.t0
    stages = trace.stages(end)
    with open(out / "rss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb", "processes", "stage"])
        for t, r, n in trace.samples:
            w.writerow([f"{t:.3f}", f"{r:.1f}", n, trace.stage_at(t, stages)])
    peak = max(trace.samples, key=lambda s: s[1]) if trace.samples else (None, None, 0)
    result = {
        "command": cmd, "returncode": proc.returncode, "wall_s": end, "interval_s": interval,
        "samples": len(trace.samples), "peak_mb": peak[1], "t_peak_s": peak[0],
        "peak_stage": trace.stage_at(peak[0], stages) if peak[0] is not None else None,
        "ru_maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        "markers": trace.seen, "markers_missing": [n for _, n in markers
                                                   if n not in {m["stage"] for m in trace.seen}],
        "stages": stages,
    }
    (out / "stages.json").write_text(json.dumps(result, indent=1))
    plot(trace.samples, stages, out / "rss.png", title=" ".join(cmd)[-90:])
    return result


def plot(samples: list[tuple[float, float, int]], stages: list[dict[str, Any]],
         path: pathlib.Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    colours = plt.get_cmap("tab10").colors
    for i, s in enumerate(stages):
        ax.axvspan(s["start_s"], s["end_s"], color=colours[i % 10], alpha=0.18, lw=0,
                   label=f"{s['stage']} (peak {s['peak_mb'] or 0:.0f} MB)")
    if samples:
        ts, rs, _ = zip(*samples)
        ax.plot(ts, rs, color="black", lw=1.2)
        i = max(range(len(rs)), key=rs.__getitem__)
        ax.annotate(f"peak {rs[i]:.0f} MB", (ts[i], rs[i]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("RSS of the process tree (MB)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1.1 * max((r for _, r, _ in samples), default=1.0))  # room for the label
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    lines = ["| stage | start (s) | end (s) | peak RSS (MB) | at (s) |", "|---|---|---|---|---|"]
    for s in result["stages"]:
        pk = "" if s["peak_mb"] is None else f"{s['peak_mb']:.0f}"
        at = "" if s["t_peak_s"] is None else f"{s['t_peak_s']:.1f}"
        lines.append(f"| {s['stage']} | {s['start_s']:.1f} | {s['end_s']:.1f} | {pk} | {at} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/memtrace", help="directory for rss.csv, stages.json, rss.png")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    p.add_argument("--marker", action="append", default=[],
                   help="REGEX=NAME: a stage starting at the first line matching REGEX "
                        "(repeatable; replaces the SEAM job's markers)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command after --, e.g. -- python -m seam_jax.main")
    if not a.interval > 0:
        p.error(f"--interval={a.interval}; give a positive number of seconds")
    markers = [parse_marker(m) for m in a.marker] if a.marker else SEAM_MARKERS
    result = run(cmd, pathlib.Path(a.out), markers, a.interval,
                 first=START if a.marker else SEAM_START)
    print(f"\nmemory trace of: {' '.join(cmd)}", file=sys.stderr)
    print(table(result), file=sys.stderr)
    pk = result["peak_mb"]
    print(f"peak {pk or 0:.0f} MB at {result['t_peak_s'] or 0:.1f} s ({result['peak_stage']}); "
          f"largest finished descendant's ru_maxrss {result['ru_maxrss_children_mb']:.0f} MB; "
          f"exit code {result['returncode']}", file=sys.stderr)
    if result["markers_missing"]:
        print(f"markers not seen: {', '.join(result['markers_missing'])}", file=sys.stderr)
    print(f"written: {a.out}/rss.csv, stages.json, rss.png, log.txt", file=sys.stderr)
    return int(result["returncode"] or 0)


if __name__ == "__main__":
    sys.exit(main())
