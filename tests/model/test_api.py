"""ModelFn: hashed and compared by its config, so it is a sound static argument of jax.jit;
its call checks the shapes of its inputs and logits (chex, at trace time)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.model.api import ModelFn
from seam_jax.model.config import preset


def test_equal_configs_give_equal_hashes():
    a, b = tiny.model(), tiny.model()
    assert a is not b and a == b and hash(a) == hash(b)
    assert a != tiny.model(num_hidden_layers=3) and a != tiny.model("bfloat16")
    # A config with a dict (rope_scaling) and a list (eos ids) hashes too.
    c = preset("llama3.1-8b").replace(eos_token_id=[128001, 128009])
    assert isinstance(c.rope_scaling, dict)
    assert ModelFn(c) == ModelFn(c.replace()) and hash(ModelFn(c)) == hash(ModelFn(c.replace()))


def test_static_model_fn_does_not_recompile():
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def logits_sum(fn, params, ids):
        traces.append(1)  # runs once per trace, not per call
        return jnp.sum(fn(params, ids).logits)

    params = tiny.model().init(0)
    ids = jnp.asarray(tiny.batch(0)["input_ids"])
    first = logits_sum(tiny.model(), params, ids)
    second = logits_sum(tiny.model(), params, ids)  # a new instance of an equal config
    assert len(traces) == 1
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    logits_sum(tiny.model(num_hidden_layers=1), tiny.model(num_hidden_layers=1).init(0), ids)
    assert len(traces) == 2  # a different architecture does compile its own program


def test_model_call_checks_shapes():
    fn = tiny.model()
    params = fn.init(0)
    b = tiny.batch(0)
    with pytest.raises(AssertionError, match="rank"):
        jax.jit(fn)(params, b["input_ids"][0])  # [T] instead of [B, T]
    with pytest.raises(AssertionError, match="shape"):
        jax.jit(fn)(params, b["input_ids"], b["attention_mask"][:, :-1])
    with pytest.raises(AssertionError, match="type"):
        fn(params, b["input_ids"].astype(np.float32))
