"""data.benign_loss_on: "auto" trains the chat format's benign term on the answer only."""

import numpy as np
import pytest

from seam_jax.config import base_config
from seam_jax.data.format import encode_pairs, resolve_loss_on

PAIRS = [("What is 2 + 2?", "2 + 2 = 4."), ("Name the capital city of Peru.", "Lima.")]


def test_auto_is_response_for_chat_and_all_for_qa():
    assert resolve_loss_on("auto", "chat") == "response"
    assert resolve_loss_on("auto", "qa") == "all"
    assert resolve_loss_on("all", "chat") == "all"  # an explicit choice is kept
    with pytest.raises(ValueError, match="loss_on"):
        resolve_loss_on("prompt", "chat")


@pytest.mark.parametrize("fmt,same_as", [("chat", "response"), ("qa", "all")])
def test_encode_pairs_auto(tiny_tok, fmt, same_as):
    auto = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt=fmt, loss_on="auto")
    want = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt=fmt, loss_on=same_as)
    for k in want:
        np.testing.assert_array_equal(auto[k], want[k])


def test_chat_default_leaves_the_template_out(tiny_tok):
    c = base_config()
    assert c.data.format == "chat" and c.data.benign_loss_on == "auto"
    auto = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt="chat", loss_on=c.data.benign_loss_on)
    every = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt="chat", loss_on="all")
    # The template (system prompt, user turn) is most of a short row and is no target.
    assert (auto["loss_mask"].sum(1) < every["loss_mask"].sum(1) / 2).all()
