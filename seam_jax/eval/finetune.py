"""FS (fine-tuning score): fine-tune on a benign task, then measure its accuracy.

Tasks (data through ``datasets``, from a hub id or a local json/jsonl/csv/parquet file
in the same schema):

* ``sst2``: ``sentence``, ``label`` (0 negative, 1 positive); hub ``stanfordnlp/sst2``;
* ``agnews``: ``text``, ``label`` (0 World, 1 Sports, 2 Business, 3 Sci/Tech); hub ``fancyzhx/ag_news``;
* ``gsm8k``: ``question``, ``answer`` (worked solution ending ``#### N``); hub ``openai/gsm8k``, ``main``.

Classification is scored by log-likelihood over the label words (no parsing of free
text); GSM8K by greedy decoding and the last number of the output.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Any, Sequence

from seam_jax.data import PairBatches
from seam_jax.errors import ConfigError
from seam_jax.eval.harm import generate_responses
from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.eval.utility import mc_requests
from seam_jax.data.proxy import MCItem
from seam_jax.model.api import Params
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.train.loop import LoopConfig, run as run_loop
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import SftSource, build_step, optimizer_for, sft_objective

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    hub: tuple[str, str | None]  # (dataset id, config name)
    fields: tuple[str, ...]
    labels: tuple[str, ...] = ()  # classification label words; empty for generation
    instruction: str = ""
    test_split: str = "test"  # the hub split with labels to score on


TASKS = {
    "sst2": Task("sst2", ("stanfordnlp/sst2", None), ("sentence", "label"), ("negative", "positive"),
                 "Is the sentiment of this sentence positive or negative?",
                 test_split="validation"),  # SST-2's test split has no labels
    "agnews": Task("agnews", ("fancyzhx/ag_news", None), ("text", "label"),
                   ("World", "Sports", "Business", "Technology"),
                   "Which topic is this news article about: World, Sports, Business or Technology?"),
    "gsm8k": Task("gsm8k", ("openai/gsm8k", "main"), ("question", "answer"), (),
                  "Solve the problem. End with '#### ' and the answer."),
}
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown FS task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def load_task_rows(task: Task, source: str = "", split: str = "train", limit: int = 0
                   ) -> list[dict[str, Any]]:
    """Rows of ``task`` from a local file (its schema) or the hub (``source`` "" = the task's id)."""
    import datasets

    path = pathlib.Path(source).expanduser() if source else None
    if path is not None and path.suffix in _LOCAL_BUILDERS:
        if not path.is_file():
            raise ConfigError(f"FS data file {path} does not exist")
        ds = datasets.load_dataset(_LOCAL_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:
        hub_id, cfg_name = (source, None) if source else task.hub
        ds = datasets.load_dataset(hub_id, cfg_name, split=split)
    missing = [f for f in task.fields if f not in ds.column_names]
    if missing:
        raise ConfigError(f"FS task {task.name}: data has columns {ds.column_names}, missing "
                          f"{missing}")
    rows = [dict(r) for r in ds]
    return rows[:limit] if limit else rows


def pair(task: Task, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt, target response) of one row."""
    text, target = row[task.fields[0]], row[task.fields[1]]
    prompt = f"{task.instruction}\n{text}"
    if task.labels:
        return prompt, task.labels[int(target)]
    return prompt, str(target)


def gsm8k_answer(text: str) -> str | None:
    """The final number: after '####' if present, else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUMBER.findall(tail)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def accuracy(fn: Any, params: Params, tok: Any, task: Task, rows: Sequence[dict[str, Any]], *,
             fmt: str, max_new_tokens: int = 128) -> float:
    if task.labels:
        items = [MCItem(pair(task, r)[0], task.labels, int(r[task.fields[1]])) for r in rows]
        scores = continuation_logprobs(fn, params, mc_requests(tok, items, fmt), max_length=1024)
        n = len(task.labels)
        right = [max(range(n), key=lambda j: scores[i * n + j][0]) == it.correct_index
                 for i, it in enumerate(items)]
        return sum(right) / len(right)
    outs = generate_responses(fn, params, tok, [pair(task, r)[0] for r in rows], fmt=fmt,
                              max_new_tokens=max_new_tokens)
    right = [gsm8k_answer(o) == gsm8k_answer(r[task.fields[1]]) for o, r in zip(outs, rows)]
    return sum(right) / len(right)


def finetune_score(m: Any, params: Params, task_name: str, run_dir: pathlib.Path, *,
                   train_rows: Sequence[dict], test_rows: Sequence[dict], fmt: str, seq_len: int,
                   steps: int, lr: float = 2e-5, batch_size: int = 4, seed: int = 0) -> dict[str, float]:
    """Accuracy before and after ``steps`` of benign full SFT on the task (AdamW, cosine).

    ``params`` stay valid: the fine-tuning trains a copy (the train step donates its state).
    """
    task = get_task(task_name)
    before = accuracy(m.fn, params, m.tokenizer, task, test_rows, fmt=fmt)
    batches = PairBatches.from_pairs(m.tokenizer, [pair(task, r) for r in train_rows],
                                     seq_len=seq_len, batch_size=batch_size, seed=seed, fmt=fmt,
                                     name=f"FS {task.name}")
    step = build_step(sft_objective(m.fn),
                      *optimizer_for(OptimConfig(name="adamw", lr=lr, weight_decay=0.0), steps))
    state = run_loop(params, step, SftSource(batches),
                     LoopConfig(steps=steps, run_dir=run_dir, seed=seed, progress=False,
                                checkpoint=CheckpointConfig(every=max(steps, 1), keep=1),
                                desc=f"FS {task.name}"), keep_params=True)
    after = accuracy(m.fn, state["params"], m.tokenizer, task, test_rows, fmt=fmt)
    return {"fs_task": task.name, "fs_before": before, "fs_after": after}
