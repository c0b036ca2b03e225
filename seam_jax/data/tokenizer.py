"""A tiny byte-level BPE tokenizer trained by code, for offline debug runs and tests.

Real runs use the model's own tokenizer. The tiny configs and the test-suite
need *some* tokenizer with bos/eos/pad and a chat template, and must not touch
the network, so one is trained here on whatever texts the caller supplies
(usually the proxy data set).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

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
