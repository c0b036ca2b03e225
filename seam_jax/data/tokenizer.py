"""Tokenizers: a model's own (``load_tokenizer``) and a tiny byte-level BPE trained by code.

Real runs use the model's own tokenizer. The tiny configs and the test-suite
need *some* tokenizer with bos/eos/pad and a chat template, and must not touch
the network, so one is trained here on whatever texts the caller supplies
(usually the proxy data set).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from seam_jax.errors import ConfigError

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Order fixes the ids: pad=0, bos=1, eos=2, so tiny model configs can hard-code them.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# The generation prompt must be an exact textual prefix of the rendered
# user+assistant conversation: format.py relies on that to find the response.
# The assistant turn ends in eos so a model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}" + USER_TOKEN + "\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT_TOKEN
    + "\n{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TOKEN + "\n{% endif %}"
)


def build_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Args:
      texts: training corpus; the same texts give the same vocabulary.
      vocab_size: target vocabulary size including the 256 byte symbols and the
        special tokens (so it must exceed 256 + 5).
      model_max_length: recorded on the wrapper; nothing is truncated by it here.

    Returns:
      A fast tokenizer with ``<bos>``/``<eos>``/``<pad>`` (ids 1/2/0), a
      post-processor that prepends ``<bos>`` like Llama-family tokenizers, and a
      jinja chat template with user/assistant turns. It round-trips through
      ``save_pretrained``/``AutoTokenizer.from_pretrained``.
    """
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(byte_alphabet) + len(SPECIAL_TOKENS)
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size={vocab_size} must exceed {minimum} (256 bytes + specials)")

    tok = Tokenizer(models.BPE())
    # No prefix space: "Answer: x" must tokenize the same inside a longer text
    # as on its own, which the span search in format.py prefers (not requires).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte gets a symbol, so unseen characters never become unknown.
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    corpus = list(texts)
    if not corpus:
        raise ValueError("build_tiny_tokenizer needs at least one training text")
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
    )
    logger.info(
        "trained tiny BPE tokenizer: %d tokens from %d texts", len(wrapped), len(corpus)
    )
    return wrapped


# The files that ``AutoTokenizer`` builds a tokenizer from; a directory with none has none.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "tokenizer.tiktoken")


def load_tokenizer(path: str | Any) -> Any:
    """A model's own tokenizer from an HF directory or hub id; pad falls back to eos.

    Raises:
      ConfigError: the directory holds no loadable tokenizer (one line, with the reason).
    """
    from transformers import AutoTokenizer

    local = pathlib.Path(str(path)).expanduser()
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        # transformers would blame a missing sentencepiece for a directory with no tokenizer.
        raise ConfigError(
            f"{local} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); pass one with "
            f"--config.model.tokenizer=DIR_OR_HUB_ID, or save the tokenizer beside the weights")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises OSError, ValueError, ... for a bad directory
        raise ConfigError(f"cannot load a tokenizer from {path}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_TINY_TOKENIZERS: dict[tuple[int, int], PreTrainedTokenizerFast] = {}


def tiny_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """``build_tiny_tokenizer`` trained on the proxy data of ``seed`` (offline, deterministic, cached).

    400 harmful items (prompt, response and refusal) and 400 benign items give every
    word of the proxy data set a few tokens; the random-weight presets use it.
    """
    key = (vocab_size, seed)
    if key not in _TINY_TOKENIZERS:
        from seam_jax.data.proxy import benign_items, harmful_items

        texts = []
        for h in harmful_items(seed, 400):
            texts += [h.prompt, h.response, h.refusal]
        texts += [f"{b.instruction} {b.output}" for b in benign_items(seed, 400)]
        texts += ["Question: Answer:"]
        _TINY_TOKENIZERS[key] = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    return _TINY_TOKENIZERS[key]
