"""lm-evaluation-harness adapter: evaluate seam_jax models on its tasks (ZS: MMLU, TruthfulQA, ...).

Importing this module registers the model name ``seam_jax``::

    import seam_jax.eval.lm_eval_adapter  # registers "seam_jax"
    lm_eval.simple_evaluate(model="seam_jax", model_args="pretrained=runs/x/defended-hf",
                            tasks=DEFAULT_TASKS)
    lm_eval.simple_evaluate(model=SeamJaxLM.from_params(fn, params, tokenizer), tasks=[...])

The command line is lm-eval's own, with the model registered: the ``seam-lm-eval``
script (``python -m seam_jax.eval.lm_eval_adapter`` in a checkout), which takes every
``lm_eval`` argument::

    seam-lm-eval --model seam_jax \\
        --model_args pretrained=runs/x/defended-hf --tasks mmlu,truthfulqa_mc2,arc_easy

The stock ``lm_eval`` command cannot find ``seam_jax``: lm-eval (0.4.13) looks models up
only in its own registry, filled by its own imports, and reads no entry-point group.
Tokenization, truncation and the empty-context rule come from lm-eval's ``TemplateLM``,
as for its HFLM, so log-likelihoods agree with HFLM on the same weights.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.generate import generate, stop_and_pad_ids

log = logging.getLogger(__name__)

# The paper's ZS tasks (lm-eval names).
DEFAULT_TASKS = ("mmlu", "truthfulqa_mc2", "arc_easy", "arc_challenge", "hellaswag")


@register_model("seam_jax")
class SeamJaxLM(TemplateLM):
    """A seam_jax model (``ModelFn`` + params) behind lm-eval's LM interface.

    Args (``--model_args``):
      pretrained: an HF directory (e.g. a run's ``defended-hf``) or hub id.
      tokenizer: tokenizer directory, default ``pretrained``.
      batch_size: rows per forward pass.
      max_length: context window, default the model's ``max_position_embeddings``.
      max_gen_toks: default generation budget of ``generate_until``.
      add_bos_token: as HFLM's (None: the tokenizer's own default).
      dtype: compute and parameter dtype.
    """

    backend = "causal"

    def __init__(self, pretrained: str | None = None, tokenizer: Any = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool | None = None, dtype: str = "float32", *,
                 fn: ModelFn | None = None, params: Params | None = None, **unused: Any) -> None:
        super().__init__()
        if unused:
            log.info("seam_jax LM ignores model_args %s", sorted(unused))
        if fn is None:
            if pretrained is None:
                raise ValueError("seam_jax LM needs pretrained=HF_DIR (or fn, params, tokenizer)")
            from seam_jax.hf.load import load_hf
            from seam_jax.data.tokenizer import load_tokenizer

            cfg, params, model_dir = load_hf(pretrained, param_dtype=dtype, dtype=dtype)
            fn = ModelFn(cfg)
            tokenizer = load_tokenizer(tokenizer or model_dir) if not hasattr(tokenizer, "encode") \
                else tokenizer
        elif isinstance(tokenizer, str):
            from seam_jax.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        if tokenizer is None or params is None:
            raise ValueError("seam_jax LM needs a tokenizer and params")
        self.fn, self.params, self.tokenizer = fn, params, tokenizer
        self._batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = int(max_length or fn.config.max_position_embeddings or 2048)
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any],
                            additional_config: dict[str, Any] | None = None) -> SeamJaxLM:
        # lm-eval adds the command line's --batch_size/--device here; a value given in
        # --model_args wins rather than colliding with it.
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str,
                               additional_config: dict[str, Any] | None = None) -> SeamJaxLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def from_params(cls, fn: ModelFn, params: Params, tokenizer: Any, **kw: Any) -> SeamJaxLM:
        """Wrap a model already in memory (e.g. an attacked model inside a sweep)."""
        return cls(fn=fn, params=params, tokenizer=tokenizer, **kw)

    # -- what TemplateLM needs -------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.fn.config.eos_token_id
        return int(eos if isinstance(eos, int) else (eos[0] if eos else self.tokenizer.eos_token_id))

    @property
    def prefix_token_id(self) -> int:
        # HFLM conditions an empty context on bos, else eos.
        if self.tokenizer.bos_token_id is not None:
            return int(self.tokenizer.bos_token_id)
        return int(self.tokenizer.eos_token_id)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kw: Any) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            bos = self.tokenizer.bos_token
            if bos is not None and string.startswith(bos):
                add_special_tokens = False  # the text already carries its bos
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        ids = list(self.tokenizer.encode(string, **kwargs))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kw: Any) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out = continuation_logprobs(self.fn, self.params, pairs, max_length=self.max_length,
                                    batch_size=self.batch_size)
        for (key, _, _), res in zip(requests, out):
            if key is not None and self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows])
            total = sum(s for s, _ in scores)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string (sampling is not supported)."""
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
            if eos_text and eos_text not in until:
                until.append(eos_text)
            max_new = int(kwargs.pop("max_gen_toks", self._max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                log.warning("seam_jax LM decodes greedily; ignoring sampling settings %s", kwargs)
            ctx = self.tok_encode(context, left_truncate_len=max(1, self.max_length - max_new))
            # The one eos/pad rule of decoding: every end id of the config, the tokenizer's pad.
            stops, pad = stop_and_pad_ids(self.fn.config.eos_token_id, self.tokenizer)
            toks = generate(self.fn, self.params, [ctx], max_new_tokens=max_new,
                            eos_token_id=stops or self.eot_token_id, pad_token_id=pad,
                            batch_size=1)[0]
            text = self.tok_decode(toks, skip_special_tokens=False)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            if self.cache_hook is not None:
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def evaluate(fn: ModelFn, params: Params, tokenizer: Any, tasks: Sequence[str] = DEFAULT_TASKS, *,
             limit: int | None = None, batch_size: int = 8, task_manager: Any = None
             ) -> dict[str, Any]:
    """lm-eval ``simple_evaluate`` on a model in memory; returns its ``results`` dict."""
    import lm_eval

    lm = SeamJaxLM.from_params(fn, params, tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit,
                                  task_manager=task_manager, log_samples=False)
    return res["results"] if res else {}


def main() -> None:
    """``lm_eval``'s command line with the ``seam_jax`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
