"""Cached generation compiles a bounded, small number of graphs on every backend (dynamo's own counters).

dynamo compiles a function for at most 8 shapes and then silently runs it uncompiled; for flex_attention that is the
unfused path that materialises every score. Decoding steps run sdpa with a `[B, H, 1, K]` mask, and multi-token
forwards run flex at bucketed lengths (`flex_bucket`), so neither the cache length nor the prompt length compiles
anew.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch._dynamo.utils import counters

from alibi_lm.modeling.modeling_alibi import flex_bucket
from tests.tiny import random_ids, tiny_model


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def limit_hits() -> int:
    return sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "friendly reminder" past max_position_embeddings
    yield
    transformers.logging.set_verbosity(verbosity)
    torch._dynamo.reset()


def prompt(length: int, seed: int = 0) -> torch.Tensor:
    return random_ids(1, length, seed=seed).clamp(min=1)  # generate reads token 0 (pad_token_id) as padding


def greedy(model, ids: torch.Tensor, new_tokens: int, **options) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **options
        )


def test_buckets_are_powers_of_two_from_one_flex_block():
    assert [flex_bucket(n) for n in (1, 20, 128, 129, 256, 257, 1000, 1024, 1025, 16384)] == [
        128, 128, 128, 256, 256, 512, 1024, 1024, 2048, 16384,
    ]  # fmt: skip


@pytest.mark.parametrize("backend, most", [("eager", 0), ("sdpa", 0), ("flex_attention", 1)])
def test_64_step_cached_greedy_generation_compiles_at_most_one_graph(backend, most):
    model = tiny_model(attn_implementation=backend)
    out = greedy(model, prompt(20), 64)
    assert out.shape[1] == 84
    assert graphs() <= most and limit_hits() == 0


def test_flex_prompts_of_many_lengths_share_their_buckets_graph_and_stay_exact():
    model = tiny_model(attn_implementation="flex_attention")
    reference = tiny_model(attn_implementation="eager")
    for length in [*range(10, 22), 150, 200]:  # 12 lengths in bucket 128, then two in bucket 256
        ids = prompt(length, seed=length)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)
        greedy(model, ids, 4)
    assert graphs() == 2 and limit_hits() == 0  # was one graph per length, and the limit hit at the 9th


def test_flex_with_a_static_cache_and_compiled_decoding_generates_the_dynamic_caches_tokens():
    model = tiny_model(attn_implementation="flex_attention")
    ids = prompt(20)
    dynamic = greedy(model, ids, 64)
    static = greedy(model, ids, 64, cache_implementation="static")  # transformers compiles the decoding step
    assert torch.equal(static, dynamic)
    assert graphs() <= 3 and limit_hits() == 0
