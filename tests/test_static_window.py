# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""`StaticWindowLayer`: the static cache that forgets, for compiled decoding.

transformers' static sliding layer counts in a Python int that a compiled forward reads: a graph per step, or the int
as a graph input (a CUDA graph recorded per value). This layer counts in tensors, so a compiled forward decodes past
its window in one graph that takes no int, with the logits of a full cache.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import CompileConfig, DynamicCache, StaticCache

from alibi_lm.modeling.alibi_layout import StaticWindowLayer
from tests.tiny import perturb, random_ids, tiny_model

WINDOWED = dict(alibi_window_cutoff=4.0, alibi_max_bias=2.0)  # steep slopes: the widest head reads 16 keys back


class RecordingBackend:
    """A torch.compile backend that runs the graph as traced and records, per graph, its integer inputs."""

    def __init__(self):
        self.int_inputs = []

    def __deepcopy__(self, memo):  # `CompileConfig.to_dict` deep-copies its backend: keep this one
        return self

    def __call__(self, graph_module, example_inputs, **kwargs):
        self.int_inputs.append([type(value).__name__ for value in example_inputs if isinstance(value, torch.SymInt)])
        return graph_module.forward


def window_cache(model, kept: int) -> StaticCache:
    cache = StaticCache(config=model.config, max_cache_len=kept + 1)
    cache.layers = [StaticWindowLayer(max_cache_len=kept + 1) for _ in cache.layers]
    return cache


def windowed_model():
    return perturb(tiny_model(attn_implementation=None, **WINDOWED), seed=1).eval()


def test_a_compiled_forward_decodes_past_the_window_in_one_graph_that_takes_no_int():
    model = windowed_model()
    kept = model.model.keys_to_keep()
    assert kept == 16
    ids = random_ids(2, 41, seed=3)  # 10 prompt tokens, 31 decoded: past the 17 slots
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, which slides out of the window
    backend = RecordingBackend()
    step = torch.compile(model.forward, backend=backend, fullgraph=True, dynamic=False)
    window, full = window_cache(model, kept), DynamicCache()
    with torch.no_grad():
        model(ids[:, :10], attention_mask=mask[:, :10], cache=window)  # a prompt runs uncompiled
        expected = model(ids[:, :10], attention_mask=mask[:, :10], cache=full).logits
        for end in range(11, 41):
            columns = window.layers[0].window_mask(mask[:, :end], 1)  # as generate gives it: the slots' columns
            got = step(ids[:, end - 1 : end], attention_mask=columns, cache=window).logits
            expected = model(ids[:, end - 1 : end], attention_mask=mask[:, :end], cache=full).logits
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # uncompiled, a mask over every token works too
        got = model(ids[:, 40:], attention_mask=mask, cache=window).logits
        expected = model(ids[:, 40:], attention_mask=mask, cache=full).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert backend.int_inputs == [[]]  # one graph for 30 steps, and no int among its inputs (CUDA graphs record once)
    layer = window.layers[0]
    assert layer.keys.shape[-2] == kept + 1
    assert int(layer.get_seq_length()) == 41 and int(layer.next_position()) == kept


def test_a_second_turn_continues_a_compiled_generation():
    # generate compiles its single-token steps; the next turn's prompt (past the window) runs uncompiled into the same
    # cache. The tokens are those of one greedy generation over the whole conversation with a full cache.
    model = windowed_model()
    ids = random_ids(2, 12, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    compile_config = CompileConfig(backend="eager", fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    options = dict(do_sample=False, pad_token_id=0, max_new_tokens=20, return_dict_in_generate=True)
    with torch.no_grad():
        first = model.generate(
            ids, attention_mask=mask, cache_implementation="static", compile_config=compile_config, **options
        )
        cache = first.past_key_values
        assert {type(layer).__name__ for layer in cache.layers} == {"StaticWindowLayer"}
        turn = torch.cat([first.sequences, random_ids(2, 25, seed=6)], dim=1)  # 25 new tokens: more than 17 slots
        turn_mask = torch.cat([mask, torch.ones(2, turn.shape[1] - ids.shape[1], dtype=mask.dtype)], dim=1)
        second = model.generate(turn, attention_mask=turn_mask, cache=cache, compile_config=compile_config, **options)
        whole = model.generate(turn, attention_mask=turn_mask, **options)
    assert torch.equal(second.sequences, whole.sequences)
    assert int(cache.get_seq_length()) == whole.sequences.shape[1] - 1


def test_generations_of_many_lengths_decode_in_one_graph():
    # Every generation past the window has the same cache shape, whatever its prompt and length: one graph for all
    # (fullgraph, dynamic=False), where a whole static cache has the shape of the longest generation so far. One row:
    # generate's mask over every token is [1, total], and a slice of it would carry a stride that grows at every
    # step, which the compiled forward guards on: the window's mask is a new tensor.
    model = windowed_model()
    backend = RecordingBackend()
    compile_config = CompileConfig(backend=backend, fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True
    with torch.no_grad():
        for prompt, new in ((20, 30), (25, 60), (7, 45)):
            ids = random_ids(1, prompt, seed=prompt)
            options = dict(do_sample=False, pad_token_id=0, max_new_tokens=new)
            static = model.generate(ids, cache_implementation="static", compile_config=compile_config, **options)
            assert torch.equal(static, model.generate(ids, **options))
    assert backend.int_inputs == [[]]


def test_where_generate_does_not_compile_it_keeps_transformers_sliding_layers():
    # Asked as generate asks (`_valid_auto_compile_criteria`): a quantizer that cannot compile, as bitsandbytes on a
    # GPU, turns compiling off, and uncompiled transformers' sliding layers are the faster cache.
    from types import SimpleNamespace

    model = windowed_model()
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True
    options = dict(do_sample=False, pad_token_id=0, max_new_tokens=30, return_dict_in_generate=True)
    ids = random_ids(1, 20, seed=8)
    kinds = []
    with torch.no_grad():
        for quantizer in (None, SimpleNamespace(is_compileable=False)):
            model.hf_quantizer = quantizer
            out = model.generate(ids, cache_implementation="static", compile_config=compile_config, **options)
            kinds.append(type(out.past_key_values.layers[0]).__name__)
            assert torch.equal(out.sequences, model.generate(ids, **options).sequences)
    assert kinds == ["StaticWindowLayer", "StaticSlidingWindowLayer"]


def test_a_dynamic_generation_leaves_tokenizers_parallelism_alone(monkeypatch):
    # transformers' compile rule switches tokenizers' parallelism off where it compiles; asked of a stand-in static
    # cache, it must be asked only where generate builds a static cache.
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True
    with torch.no_grad():
        windowed_model().generate(random_ids(1, 5), compile_config=compile_config, max_new_tokens=3, pad_token_id=0)
    assert "TOKENIZERS_PARALLELISM" not in os.environ


def test_several_tokens_into_the_window_cannot_be_compiled_or_cropped():
    model = windowed_model()
    cache = window_cache(model, model.model.keys_to_keep())
    with torch.no_grad():
        model(random_ids(1, 5), cache=cache)
        step = torch.compile(model.forward, backend="eager", fullgraph=True, dynamic=False)
        with pytest.raises(Exception, match="compiled forward of 3 tokens into a StaticWindowLayer"):
            step(random_ids(1, 3), cache=cache)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(-1)
