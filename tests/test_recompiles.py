"""Cached generation, and compiled forwards over many lengths, compile a bounded, small number of graphs on every
backend (dynamo's own counters).

dynamo compiles a function for at most 8 shapes and then silently runs it uncompiled; for flex_attention that is the
unfused path that materialises every score. Decoding steps run sdpa with a `[B, H, 1, K]` mask, and multi-token
forwards run flex at bucketed lengths (`flex_bucket`), so neither the cache length nor the prompt length compiles
anew. The sdpa default on the CPU compiles one static graph and one of dynamic length, where its blocked plan is an
opaque op (`dynamic_blocked_attention`).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch._dynamo.utils import counters

from alibi_lm.modeling.alibi_masks import flex_bucket
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


def peak_rise_mib(run) -> float:
    """Resident memory (MiB) that `run()` adds at its peak (Linux: VmHWM after resetting it)."""

    def status(field: str) -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS")
    run()
    return (status("VmHWM") - base) / 1024


def test_a_flex_sweep_over_lengths_dtypes_layouts_and_windows_never_runs_unfused():
    # One process, as an extrapolation sweep or a server sees it: fp32 and bf16, dense and windowed, plain, padded
    # and packed, 12 lengths from 100 to 12,800. dynamo's budget of 8 graphs per code object used to be shared by
    # all of them (and by every other flex user): the 9th graph ran torch's unfused flex, L x L.
    models = {
        (dtype, cutoff): tiny_model(attn_implementation="flex_attention", alibi_window_cutoff=cutoff).to(dtype)
        for dtype in (torch.float32, torch.bfloat16)
        for cutoff in (None, 4.0)
    }
    layouts = ("plain", "padded", "packed")
    lengths = [100, 150, 200, 300, 400, 600, 800, 1000, 1600, 3200, 6400, 12800]
    for i, length in enumerate(lengths):
        dtype = (torch.float32, torch.bfloat16)[i % 2]
        cutoff = (None, 4.0)[(i // 2) % 2]
        layout = layouts[i % 3]
        ids, kwargs = prompt(length, seed=i), {}
        if layout == "padded":
            kwargs["attention_mask"] = torch.ones_like(ids).index_fill_(1, torch.arange(3), 0)
        if layout == "packed":  # transformers' padding-free format: positions restart at each document
            kwargs["position_ids"] = torch.cat([torch.arange(length // 3), torch.arange(length - length // 3)])[None]
        with torch.no_grad():
            logits = models[dtype, cutoff](ids, logits_to_keep=1, **kwargs).logits
        assert torch.isfinite(logits).all()
    assert limit_hits() == 0  # and torch's "unfused implementation" warning is an error in this suite (setup.cfg)
    longest = models[torch.float32, None]
    ids = prompt(12800)
    with torch.no_grad():
        longest(ids, logits_to_keep=1)  # compiled at this bucket already (fp32, dense, plain): warm
        rise = peak_rise_mib(lambda: longest(ids, logits_to_keep=1))
    # The smallest L x L object at the bucket (16,384) is a bool mask of 256 MiB; fp32 scores for 4 heads 4 GiB.
    assert rise < 64
    assert limit_hits() == 0


def test_flex_refuses_to_run_uncompiled():
    model = tiny_model(attn_implementation="flex_attention")
    with pytest.raises(RuntimeError, match="flex_attention ran uncompiled.*attn_implementation='sdpa'"):
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            model(prompt(40))


# The sdpa default on the CPU: heads whose bias silences keys run in blocks, the others fused. Lengths from where
# every head sees the whole sequence (100) to where two of the tiny model's four heads run blocked (900).
SWEEP = [100, 130, 170, 200, 260, 330, 400, 520, 700, 900]


def test_a_compiled_sdpa_model_over_ten_lengths_compiles_two_graphs_and_stays_exact():
    model = tiny_model()
    compiled = torch.compile(model)
    with torch.no_grad():
        for length in SWEEP:
            ids = prompt(length, seed=length)
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    # One static graph, then one of dynamic length: the blocked plan's choices used to guard on the length, one
    # graph per length until dynamo's limit, after which the whole model ran uncompiled.
    assert graphs() == 2 and limit_hits() == 0


def test_compiled_training_over_lengths_matches_eager_gradients():
    model = tiny_model().train()
    compiled = torch.compile(model)
    for length in SWEEP[::2]:
        ids = prompt(length, seed=length)
        grads = []
        for run in (compiled, model):
            model.zero_grad()
            run(ids, labels=ids).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for mine, reference in zip(*grads):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)
    assert graphs() == 2 and limit_hits() == 0


def test_compiled_training_on_padded_batches_of_many_lengths_compiles_two_graphs():
    # DataCollatorWithPadding's batches: a length per batch, right padding. The rows' tokens are gathered ahead of
    # their padding inside the graph (`Compaction`), which must not specialize it to one length.
    model = tiny_model().train()
    compiled = torch.compile(model)
    for length in SWEEP[::2]:
        ids = prompt(length, seed=length).expand(2, -1)
        mask = torch.ones_like(ids)
        mask[1, length - length // 5 :] = 0
        labels = ids.masked_fill(mask == 0, -100)
        grads = []
        for run in (compiled, model):
            model.zero_grad()
            run(ids, attention_mask=mask, labels=labels).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for mine, reference in zip(*grads):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)
    assert graphs() == 2 and limit_hits() == 0


def test_compiled_training_on_packed_batches_of_many_lengths_compiles_two_graphs():
    # DataCollatorWithFlattening's batches: one row of a length per batch, position_ids restarting at each document.
    # The documents are found inside the graph and cut every head's blocks there (`PackedDocuments`).
    model = tiny_model().train()
    compiled = torch.compile(model)
    for length in SWEEP[::2]:
        ids = prompt(length, seed=length)
        first = length // 3
        position_ids = torch.cat([torch.arange(first), torch.arange(length - first)])[None]
        grads = []
        for run in (compiled, model):
            model.zero_grad()
            run(ids, position_ids=position_ids, labels=ids).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for mine, reference in zip(*grads):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)
    assert graphs() == 2 and limit_hits() == 0


def test_compiled_attention_dropout_in_windowed_blocks_runs_at_every_length():
    # Windowed ALiBi in blocks (windows 4 to 256 tokens): with dropout the plan runs outside the graph at a dynamic
    # length (the op's recomputing backward could not redraw its masks). Its masks differ from eager's, its loss not.
    model = tiny_model(attention_dropout=0.3, alibi_window_cutoff=1.0).train()
    compiled = torch.compile(model)
    for length in (900, 1000, 1100, 1200):
        ids = prompt(length, seed=length)
        with torch.no_grad():
            mine, reference = (run(ids, labels=ids).loss for run in (compiled, model))
        torch.testing.assert_close(mine, reference, atol=5e-3, rtol=0)
    assert limit_hits() == 0


def test_a_compiled_model_without_bias_keeps_one_graph_per_shape_kind():
    # sdpa's `is_causal` must be a bool: at a dynamic length `L > 1` is a SymBool, and passing it broke the graph at
    # every layer of every forward.
    model = tiny_model(position_encoding="none")
    compiled = torch.compile(model)
    with torch.no_grad():
        for length in SWEEP[:5]:
            ids = prompt(length, seed=length)
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    assert graphs() == 2 and limit_hits() == 0
