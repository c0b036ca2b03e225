"""A short generation demo: answer ``generate.prompts``, encoded in ``data.format`` (as in training)."""

from __future__ import annotations

import json
import logging
import pathlib

import ml_collections as mlc

from seam_jax.hf.source import load_model
from seam_jax.model.generate import generate_text
from seam_jax.train import run_dir as run_dir_lib

log = logging.getLogger(__name__)


def run(c: mlc.ConfigDict) -> list[str]:
    m = load_model(c)
    g = c.generate
    prompts = list(g.prompts)
    texts = generate_text(m.fn, m.params, m.tokenizer, prompts, fmt=c.data.format,
                          max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                          top_p=g.top_p, batch_size=g.batch_size, seed=c.seed)
    run_dir = run_dir_lib.resolve(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": p, "response": t} for p, t in zip(prompts, texts)]
    (run_dir / "generations.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        log.info("\n> %s\n%s", r["prompt"], r["response"])
    return texts
