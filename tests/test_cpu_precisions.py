"""The CPU default beyond fp32 eager: bf16 and fp16 weights, autocast and torch.compile take the fused path, exactly.

Until 2026-12-06 each of these fell back to the L x L mask without a word: on an Intel Xeon (2 threads, 2,048 tokens)
the training step ran at 0.69x the no-bias model in bf16, 0.54x under bf16 autocast and 0.54x compiled
(`recipes/experiments/cpu_paths.py`).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import DynamicCache

from alibi_lm.modeling import alibi_blocked, alibi_masks
from alibi_lm.modeling.alibi_attention import windowed_alibi_attention
from alibi_lm.modeling.alibi_blocked import WindowedAlibi, runs_key_only
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import get_alibi_slopes
from tests.tiny import random_ids, tiny_model

CPU = torch.device("cpu")


def default_mask(heads: int, length: int, dtype: torch.dtype, **config) -> WindowedAlibi:
    model = tiny_model(num_attention_heads=heads, hidden_size=8 * heads, **config)
    return model.model.build_attention_mask(build_layout(None, None, 1, length, length, 0, CPU), dtype)


@pytest.mark.parametrize("denormal_free", [(), (torch.bfloat16,)])
def test_which_heads_run_key_only(monkeypatch, denormal_free):
    monkeypatch.setattr(alibi_blocked, "DENORMAL_FREE_DTYPES", denormal_free)
    mask = default_mask(8, 2048, torch.bfloat16)  # slopes 1/2 ... 1/256: m * 2047 <= 40 from 1/64 on
    assert mask.windows == [80, 160, 320, 640, 1280, 2560, 5120, 10240] and all(mask.silenced)
    chosen = {
        dtype: [runs_key_only(mask, h, 2048, dtype) for h in range(8)] for dtype in (torch.float32, torch.bfloat16)
    }
    assert chosen[torch.float32] == [False] * 5 + [True] * 3  # denormals: the steep heads stop at their reach
    # where bf16 products take no denormal penalty (AMX), heads that blocks would not save half the work of (windows
    # 640 and 1,280 at 2,048 tokens) run key-only; blocks keep the short windows
    assert chosen[torch.bfloat16] == [False] * 3 + [True] * 5 if denormal_free else chosen[torch.float32]
    # a window that the model keeps (windowed ALiBi, cutoff 4: windows 8 ... 1,024) is never run as if unwindowed
    windowed = default_mask(8, 2048, torch.bfloat16, alibi_window_cutoff=4.0)
    assert not any(windowed.silenced) and not any(runs_key_only(windowed, h, 2048, torch.bfloat16) for h in range(8))


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(True, True, (torch.bfloat16,)), (False, True, (torch.bfloat16,)), (True, False, (torch.bfloat16,)),
     (False, False, ())],
)  # fmt: skip
def test_bf16_counts_as_denormal_free_where_the_cpu_has_bf16_products(monkeypatch, amx, avx512_bf16, expected):
    """AMX tiles (Intel Sapphire Rapids on) and AVX512-BF16 (AMD Zen 4 on, where the key-only plan measured 0.99x
    the no-bias bf16 training step and blocks 0.92x) treat denormal inputs as zero; a CPU with neither (AVX2) keeps
    blocks, and so does a torch without the checks."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert alibi_blocked.denormal_free_dtypes() == expected
    for check in alibi_blocked.BF16_DENORMAL_FREE_CHECKS:
        monkeypatch.delattr(torch.cpu, check)
    assert alibi_blocked.denormal_free_dtypes() == ()


def dense_reference(q, k, v, slopes):
    length = q.shape[-2]
    d = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    bias = (-torch.tensor(slopes, dtype=torch.float64)[:, None, None] * d).masked_fill(d < 0, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=q.shape[-1] ** -0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("denormal_free", [False, True])
def test_sixteen_bit_attention_and_gradients_are_as_exact_as_a_dense_mask(monkeypatch, dtype, denormal_free):
    """Against fp64, the fused path (its bias in fp32) is within 1.5x of sdpa with the dense 16-bit mask that eager
    ALiBi models use (measured 1.0x-1.35x: a blocked head's key and value gradients are summed over overlapping spans
    in 16 bits); with the key-only bias in bf16 (`m * pos_k` up to 20, rounded by up to 0.06) it was 20x-40x."""
    monkeypatch.setattr(alibi_blocked, "DENORMAL_FREE_DTYPES", (dtype,) if denormal_free else ())
    torch.manual_seed(0)
    heads, length = 8, 1024
    inputs = [torch.randn(1, heads, length, 16, dtype=torch.float64) for _ in range(3)]
    grad = torch.randn(1, heads, length, 16, dtype=torch.float64)
    slopes = get_alibi_slopes(heads).tolist()
    mask = default_mask(heads, length, dtype)
    assert any(runs_key_only(mask, h, length, dtype) for h in range(heads))
    assert not all(runs_key_only(mask, h, length, dtype) for h in range(heads))

    def run(attention, precision):
        leaves = [t.to(precision, copy=True).requires_grad_() for t in inputs]
        out = attention(*leaves)
        out.backward(grad.to(precision))
        return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]

    exact = run(lambda q, k, v: dense_reference(q, k, v, slopes), torch.float64)
    fused = run(lambda q, k, v: windowed_alibi_attention(q, k, v, mask, 16**-0.5, 0.0), dtype)
    dense = run(lambda q, k, v: dense_reference(q, k, v, slopes), dtype)
    for got, reference, expected in zip(fused, dense, exact):
        ours, theirs = got - expected, reference - expected
        assert ours.abs().max() <= 1.5 * theirs.abs().max()
        assert ours.square().mean().sqrt() <= 1.5 * theirs.square().mean().sqrt()


def calls_while(run) -> tuple[set[str], int]:
    """The aten kernels `run` calls, and how often it built a dense mask (the general rule's or the plain slots'
    shortcut, `[.., Q, K]` both)."""
    built = []
    originals = {name: getattr(alibi_masks, name) for name in ("build_dense_mask", "decoding_mask")}
    for name, original in originals.items():
        setattr(alibi_masks, name, lambda *a, original=original, **k: built.append(1) or original(*a, **k))
    try:
        with torch.profiler.profile() as profile:
            run()
    finally:
        for name, original in originals.items():
            setattr(alibi_masks, name, original)
    return {event.key for event in profile.key_averages()}, len(built)


@pytest.mark.parametrize("precision", ["bf16 weights", "bf16 autocast", "fp16 weights"])
def test_a_sixteen_bit_training_step_takes_the_fused_kernel_and_builds_no_dense_mask(precision):
    model = tiny_model(num_attention_heads=8, hidden_size=64).train()
    if precision != "bf16 autocast":
        model = model.to(torch.bfloat16 if precision.startswith("bf16") else torch.float16)
    ids = random_ids(1, 1500)  # heads fused and heads blocked

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16 autocast"):
            loss = model(ids, labels=ids).loss
        loss.backward()

    kernels, dense = calls_while(step)
    assert dense == 0
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


def test_a_compiled_training_step_takes_the_fused_path_and_equals_eager():
    """Compiled, the plan (which heads run fused, which in blocks) is traced from Python numbers: no L x L mask, one
    graph, and the eager step's loss and gradients."""
    ids = random_ids(1, 600)  # m * 599 > 40 for the three steepest of 8 heads: blocks run
    eager, compiled = (tiny_model(num_attention_heads=8, hidden_size=64).train() for _ in range(2))
    eager(ids, labels=ids).loss.backward()
    torch.compiler.reset()
    forward = torch.compile(compiled, fullgraph=True, dynamic=False)
    kernels, dense = calls_while(lambda: forward(ids, labels=ids).loss.backward())
    assert dense == 0
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    for (name, expected), got in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, atol=1e-5, rtol=1e-4, msg=name)


def padding(ids: torch.Tensor) -> torch.Tensor:
    """A 2-D attention_mask for three rows: left padding, right padding, and a hole of 7 tokens."""
    length = ids.shape[1]
    mask = torch.ones_like(ids)
    mask[0, : length // 3] = 0
    mask[1, length - length // 4 :] = 0
    mask[2, length // 5 : length // 5 + 7] = 0
    return mask


def token_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels for tokens predicted from tokens: a padding slot's outputs are nobody's (and differ between paths)."""
    after_padding = F.pad(mask, (1, 0), value=1)[:, :-1] == 0
    return ids.masked_fill((mask == 0) | after_padding, -100)


def test_a_padded_batch_takes_the_fused_path_and_equals_the_dense_mask():
    # Each row's tokens gathered ahead of its padding make the layout plain; eager attention (L x L) is the reference.
    ids = random_ids(3, 600)
    mask = padding(ids)
    labels = token_labels(ids, mask)
    model, reference = (
        tiny_model(num_attention_heads=8, hidden_size=64, attn_implementation=backend).train()
        for backend in ("sdpa", "eager")
    )
    outputs = {}
    kernels, dense = calls_while(
        lambda: outputs.setdefault("sdpa", model(ids, attention_mask=mask, labels=labels)).loss.backward()
    )
    expected = reference(ids, attention_mask=mask, labels=labels)
    expected.loss.backward()
    assert dense == 0
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    valid = mask.bool()
    torch.testing.assert_close(outputs["sdpa"].logits[valid], expected.logits[valid], atol=1e-5, rtol=0)
    for (name, want), got in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mask_kind", ["all ones", "padded"])
def test_a_compiled_step_with_an_attention_mask_builds_no_dense_mask_and_equals_eager(mask_kind):
    # Compiled, an attention_mask's values cannot be read, so even all ones (what tokenizers return, and
    # run_clm-style training passes) took the L x L mask: a training step at 0.43x (2,048 tokens, Intel Xeon).
    ids = random_ids(3, 600)
    mask = torch.ones_like(ids) if mask_kind == "all ones" else padding(ids)
    assert_a_compiled_step_builds_no_dense_mask_and_equals_eager(
        False, ids, attention_mask=mask, labels=token_labels(ids, mask)
    )  # the logits at padding slots too


def assert_a_compiled_step_builds_no_dense_mask_and_equals_eager(dynamic: bool, ids: torch.Tensor, **inputs) -> None:
    """A training step of `torch.compile(fullgraph=True)` builds no dense mask, takes no math kernel, and gives the
    eager step's logits (every slot) and gradients."""
    eager, compiled = (tiny_model(num_attention_heads=8, hidden_size=64).train() for _ in range(2))
    expected = eager(ids, **inputs)
    expected.loss.backward()
    torch.compiler.reset()
    forward = torch.compile(compiled, fullgraph=True, dynamic=dynamic)
    outputs = {}
    kernels, dense = calls_while(lambda: outputs.setdefault("compiled", forward(ids, **inputs)).loss.backward())
    assert dense == 0
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    torch.testing.assert_close(outputs["compiled"].logits, expected.logits, atol=1e-5, rtol=0)
    for (name, want), got in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-4, msg=name)


def packing(lengths: list[list[int]]) -> torch.Tensor:
    """`document_ids` `[B, L]` for rows packed with documents of these lengths."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths])


# Documents of one token, documents that cross blocks, one that outreaches every block, and a row of one document.
PACKED = [[1, 130, 47, 300, 122], [600], [20] * 30]


def packed_padding() -> torch.Tensor:
    """An attention_mask `[3, 600]` for `PACKED`: right padding inside the last document, left padding with a hole
    inside the document, and a whole document of padding next to a hole across two documents."""
    mask = torch.ones(3, 600, dtype=torch.long)
    mask[0, 550:] = 0
    mask[1, :100] = mask[1, 300:310] = 0
    mask[2, 100:120] = mask[2, 395:405] = 0
    return mask


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("cutoff", [None, 4.0])
def test_packed_documents_run_in_blocks_and_equal_the_dense_mask(cutoff, padded):
    # Packed documents (transformers' padding-free format, our `packing`) took the L x L mask until 2026-12-06: a
    # training step of 4 documents of 512 tokens at 0.71x the unpacked one (cpu-small model, Intel Xeon); padded
    # ones until 2026-12-07 (now gathered ahead of their padding first, each padding slot a document of its own).
    ids, documents = random_ids(3, 600), packing(PACKED)
    mask = packed_padding() if padded else None
    # Neither a padding slot's label, nor the label its logits predict (the next slot's), counts.
    labels = ids.masked_fill((mask == 0) | (F.pad(mask, (1, 0), value=1)[:, :-1] == 0), -100) if padded else ids
    model, reference = (
        tiny_model(num_attention_heads=8, hidden_size=64, alibi_window_cutoff=cutoff, attn_implementation=backend)
        for backend in ("sdpa", "eager")
    )
    inputs = dict(attention_mask=mask, document_ids=documents, labels=labels)
    outputs = {}
    kernels, dense = calls_while(lambda: outputs.setdefault("sdpa", model(ids, **inputs)).loss.backward())
    expected = reference(ids, **inputs)
    expected.loss.backward()
    assert dense == 0
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    tokens = (mask == 1) if padded else torch.ones_like(ids, dtype=torch.bool)  # a padding slot's output is unused
    torch.testing.assert_close(outputs["sdpa"].logits[tokens], expected.logits[tokens], atol=1e-5, rtol=0)
    for (name, want), got in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_documents_cut_every_window_to_the_longest_document():
    # The work of a packed batch follows its documents, not its length: no head looks farther back than the longest
    # document reaches (127 tokens here; windows rounded up to alibi_blocked.DOCUMENT_REACH_STEP).
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    layout = build_layout(None, packing([[128] * 8]), 1, 1024, 1024, 0, CPU)
    plan = model.model.build_attention_mask(layout, torch.float32)
    assert isinstance(plan, WindowedAlibi)
    assert max(plan.windows) == alibi_blocked.DOCUMENT_REACH_STEP
    assert plan.documents.starts[0, 300].item() == 256


def test_a_compiled_packed_step_builds_no_dense_mask_and_equals_eager():
    # Compiled, documents are found from position_ids inside the graph (their values cannot be read): every head then
    # runs in blocks with its own window, still no L x L mask. Of dynamic length here (the op); the length-specialised
    # graph is checked against eager in test_recompiles.py.
    lengths = [1, 130, 47, 300, 122]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = random_ids(1, 600)
    assert_a_compiled_step_builds_no_dense_mask_and_equals_eager(True, ids, position_ids=position_ids, labels=ids)


@pytest.mark.parametrize("padded", [False, True])
def test_a_compiled_packed_step_with_an_attention_mask_builds_no_dense_mask_and_equals_eager(padded):
    # Compiled, any attention_mask is padding (its values cannot be read): packed document_ids with the all-ones mask
    # that a padding collator adds took the L x L mask until 2026-12-07, as did padded packed rows.
    ids, documents = random_ids(3, 600), packing(PACKED)
    mask = packed_padding() if padded else torch.ones_like(ids)
    inputs = dict(attention_mask=mask, document_ids=documents, labels=ids.masked_fill(mask == 0, -100))
    assert_a_compiled_step_builds_no_dense_mask_and_equals_eager(False, ids, **inputs)


def test_attention_dropout_runs_in_blocks_and_keeps_the_expected_attention():
    # With attention dropout every sdpa call takes the math kernel; the L x L mask made it write out every score, the
    # silenced ones as denormals: a training step with dropout 0.1 at 0.69x the no-bias model's (cpu-small, 2,048
    # tokens, Intel Xeon). In blocks, dropped weights are still drawn per weight: the mean of many draws is the
    # attention without dropout, each draw is not.
    model = tiny_model(num_attention_heads=8, hidden_size=64, attention_dropout=0.3).train()
    ids = random_ids(1, 600)
    kernels, dense = calls_while(lambda: model(ids, labels=ids).loss.backward())
    assert dense == 0
    heads, length = 8, 600
    plan = model.model.build_attention_mask(build_layout(None, None, 1, length, length, 0, CPU), torch.float32)
    assert isinstance(plan, WindowedAlibi) and min(plan.windows) < length // 4  # steep heads cut, as without dropout
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, 16) for _ in range(3))
    expected = dense_reference(q, k, v, get_alibi_slopes(heads).tolist())
    draws = torch.stack([windowed_alibi_attention(q, k, v, plan, 16**-0.5, 0.3) for _ in range(200)])
    assert (draws[0] - expected).abs().mean() > 0.1
    assert (draws.mean(0) - expected).abs().mean() < 0.03


@pytest.mark.parametrize("padded", [False, True])
def test_a_static_cache_prefill_runs_the_plan_on_the_prompts_own_slots(padded):
    # A static cache's first forward has max_cache_len key slots, those after the prompt empty: it took a
    # [B, H, Q, max_cache_len] mask, and a 4,096-token prompt generated at 0.37x the dynamic cache's speed with 6x its
    # peak memory (cpu-small, Intel Xeon).
    from transformers import StaticCache

    model = tiny_model(num_attention_heads=8, hidden_size=64)
    ids = random_ids(2, 600)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :100] = 0
    cache = StaticCache(config=model.config, max_cache_len=700)
    outputs = {}
    with torch.no_grad():
        kernels, dense = calls_while(
            lambda: outputs.setdefault("static", model(ids, attention_mask=mask, cache=cache, use_cache=True))
        )
        expected = model(ids, attention_mask=mask, use_cache=True)
        assert dense == 0
        assert "aten::_scaled_dot_product_attention_math" not in kernels
        valid = mask.bool()
        torch.testing.assert_close(outputs["static"].logits[valid], expected.logits[valid], atol=1e-5, rtol=0)
        # and the cache it filled decodes as the dynamic one does
        step = torch.tensor([[5], [7]])
        after = F.pad(mask, (0, 1), value=1)
        static_next = model(step, attention_mask=after, cache=cache).logits
        dynamic_next = model(step, attention_mask=after, cache=expected.cache).logits
    torch.testing.assert_close(static_next, dynamic_next, atol=1e-5, rtol=0)


def test_a_compiled_forward_prefills_a_static_cache_in_chunks_on_the_plan(monkeypatch):
    # transformers' compiled-generation recipe, `model.forward = torch.compile(model.forward, fullgraph=True)` with a
    # static cache, traces the prefill too, here in chunks (`prefill_chunk_size`). The first chunk finds a fresh cache,
    # which counts 0 as an int until its first update, so its own slots are known. The later ones find the count as a
    # tensor the graph cannot read: they took the [B, H, Q, K] mask until `StaticContinuation` read it in an op.
    model = tiny_model(num_attention_heads=8, hidden_size=64, max_position_embeddings=2048)
    ids = random_ids(2, 700)
    mask = torch.ones_like(ids)
    mask[1, :150] = 0  # past the first chunk: the later chunks start with padding in the cache
    generate = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, prefill_chunk_size=200)
    with torch.no_grad():
        expected = model.generate(ids, **generate)
    dense = []  # multi-token [B, H, Q, K] masks; appended to only then, so the list adds no guard to the graphs
    original = alibi_masks.build_dense_mask
    monkeypatch.setattr(
        alibi_masks,
        "build_dense_mask",
        lambda layout, *a, **k: (
            (layout.query_length > 1 and dense.append(layout.query_length)) or original(layout, *a, **k)
        ),
    )
    model.forward = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        tokens = model.generate(ids, cache_implementation="static", **generate)
    assert torch.equal(tokens, expected)
    assert dense == []


@pytest.mark.parametrize("cutoff", [None, 4.0])
@pytest.mark.parametrize(
    "rows", ["plain", "left-padded in the cache", "left-padded past it", "a hole", "right-padded", "no cache"]
)
def test_the_static_continuation_op_equals_the_dense_mask(rows, cutoff):
    """`continued_blocked_attention`, which compiled forwards call after a static cache's tokens, against sdpa with
    the `[B, H, Q, K]` mask the eager model builds for the same slots: the plan for plain and left-padded rows (and a
    cache counted 0 as a tensor, once reset), that mask itself for rows padded otherwise; dense and windowed ALiBi."""
    from alibi_lm.modeling.alibi_attention import continued_blocked_attention
    from alibi_lm.modeling.alibi_masks import alibi_bias, build_dense_mask

    torch.manual_seed(0)
    heads, slots, queries = 8, 1000, 300
    past = 0 if rows == "no cache" else 600
    filled = past + queries
    valid = torch.ones(2, slots, dtype=torch.bool)
    valid[:, filled:] = False  # the cache's empty slots
    if rows == "left-padded in the cache":
        valid[1, :250] = False
    elif rows in ("left-padded past it", "no cache"):
        valid[1, : past + 40] = False
    elif rows == "a hole":
        valid[0, 650:700] = False
    elif rows == "right-padded":
        valid[1, filled - 30 : filled] = False
    q = torch.randn(2, heads, queries, 16)
    k, v = (torch.randn(2, heads, slots, 16) for _ in range(2))
    slopes = get_alibi_slopes(heads).tolist()
    config = tiny_model(num_attention_heads=8, hidden_size=64, alibi_window_cutoff=cutoff).config
    windows = None if cutoff is None else alibi_blocked.alibi_window_values(slopes, cutoff)  # 8 ... 1,024
    plan = alibi_blocked.blocked_plan(config, queries, slopes, windows, torch.float32, None, CPU, exact_windows=True)
    got = continued_blocked_attention(
        q, k, v, torch.tensor(past), None if rows == "plain" else valid, slopes, plan.windows, plan.silenced, 0.25,
        windows or [],
    )  # fmt: skip
    layout = build_layout(valid[:, :filled], None, 2, queries, filled, past, CPU)
    rates, reach = torch.tensor(slopes), None if windows is None else torch.tensor(windows)
    mask = build_dense_mask(layout, lambda h, distance: alibi_bias(rates[h], distance), heads, torch.float32, reach)
    expected = F.scaled_dot_product_attention(q, k[:, :, :filled], v[:, :, :filled], attn_mask=mask, scale=0.25)
    query_valid = valid[:, past:filled]  # a padding query's output is its own value on both (it sees itself alone)
    torch.testing.assert_close(got[query_valid], expected.transpose(1, 2)[query_valid], atol=1e-5, rtol=0)


def continue_after(
    model, ids: torch.Tensor, past: int, cache_kind: str, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, set[str], int]:
    """Logits of `ids[:, past:]` after a cache of `ids[:, :past]` (with the attention_mask `mask` over both), the
    kernels that ran and the dense masks built."""
    from transformers import DynamicCache, StaticCache

    if cache_kind == "dynamic":
        cache = DynamicCache(config=model.config)
    else:
        cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 100)
    outputs = {}
    with torch.no_grad():
        model(ids[:, :past], attention_mask=None if mask is None else mask[:, :past], cache=cache, use_cache=True)
        kernels, dense = calls_while(
            lambda: outputs.setdefault("continued", model(ids[:, past:], attention_mask=mask, cache=cache))
        )
    return outputs["continued"].logits, kernels, dense


@pytest.mark.parametrize("cutoff", [None, 4.0])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_a_prompt_continued_after_a_cache_runs_the_plan_and_equals_the_whole_prompt(cutoff, cache_kind):
    # A chat's next turn, a chunked prefill: queries after cached tokens took a [1, H, Q, K] mask, a 512-token prompt
    # after 4,096 cached ones at 0.60x the no-bias model (cpu-small, Intel Xeon). Cached prefixes shorter and longer
    # than the steep heads' windows (80 to 320 tokens here), continuations of one block and of several.
    size = dict(num_attention_heads=8, hidden_size=64, alibi_window_cutoff=cutoff)
    model, reference = (tiny_model(attn_implementation=backend, **size) for backend in ("sdpa", "eager"))
    ids = random_ids(1, 1000)
    with torch.no_grad():
        whole = reference(ids).logits
    for past, stop in ((50, 300), (400, 1000), (900, 1000)):
        logits, kernels, dense = continue_after(model, ids[:, :stop], past, cache_kind)
        assert dense == 0 and "aten::_scaled_dot_product_attention_math" not in kernels
        torch.testing.assert_close(logits, whole[:, past:stop], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cutoff", [None, 4.0])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_a_left_padded_batch_continued_after_a_cache_runs_the_plan_and_equals_the_whole_prompts(cutoff, cache_kind):
    # A batch's chunked prefill (generate's prefill_chunk_size) or next turn: left-padded queries after cached tokens
    # took a [B, H, Q, K] mask until 2026-12-07. Rows unpadded, padded within the cache, and padded past it (padding
    # queries see themselves alone, as the visibility rule says; a cache of padding alone); at 900 every query is a
    # token, and the mild heads take the key-only call with each row's padding hidden.
    size = dict(num_attention_heads=8, hidden_size=64, alibi_window_cutoff=cutoff)
    model, reference = (tiny_model(attn_implementation=backend, **size) for backend in ("sdpa", "eager"))
    ids, mask = random_ids(3, 1000), torch.ones(3, 1000, dtype=torch.long)
    mask[1, :150] = mask[2, :700] = 0
    with torch.no_grad():
        whole = reference(ids, attention_mask=mask).logits
    for past, stop in ((50, 300), (150, 400), (400, 1000), (900, 1000)):
        logits, kernels, dense = continue_after(model, ids[:, :stop], past, cache_kind, mask[:, :stop])
        assert dense == 0 and "aten::_scaled_dot_product_attention_math" not in kernels
        torch.testing.assert_close(logits, whole[:, past:stop], atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_a_prompt_continued_with_gradients_runs_the_plan_and_trains_as_eager(padded):
    # Training on a continuation (a cached prefix, a prompt tuned after it) took a [B, H, Q, K] mask until 2026-12-07:
    # 512 tokens after 4,096 trained at 0.40x the no-bias model, the plan at 1.04x (recipes/results/continued-prompt.md,
    # cpu-small, Intel Xeon). The mild heads cannot take the key-only call after a cache there (its two softmaxes join
    # by log-sum-exps, which carry no gradient): they run in blocks too.
    size = dict(num_attention_heads=8, hidden_size=64)
    ids, mask = random_ids(2, 900), torch.ones(2, 900, dtype=torch.long)
    if padded:
        mask[1, :150] = 0

    def train_on_continuation(backend: str) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        model = tiny_model(attn_implementation=backend, **size).train()
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(ids[:, :600], attention_mask=mask[:, :600], cache=cache, use_cache=True)
        losses = []

        def step():
            losses.append(model(ids[:, 600:], attention_mask=mask, cache=cache, labels=ids[:, 600:]).loss)
            losses[0].backward()

        _, dense = calls_while(step)
        return losses[0].detach(), [p.grad for p in model.parameters()], dense

    (loss, grads, dense), (eager_loss, eager_grads, _) = map(train_on_continuation, ("sdpa", "eager"))
    assert dense == 0
    torch.testing.assert_close(loss, eager_loss, atol=1e-6, rtol=0)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad, atol=1e-6, rtol=1e-4)


def test_generate_with_a_chunked_prefill_of_a_left_padded_batch_runs_the_plan_and_gives_the_same_tokens():
    # transformers' `prefill_chunk_size` prefills a long prompt in chunks after the cache of the earlier ones: on a
    # left-padded batch every chunk after the first is a padded continuation (the [B, H, Q, K] mask until 2026-12-07).
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    model.generation_config.pad_token_id = 0
    ids, mask = random_ids(2, 700).clamp(min=1), torch.ones(2, 700, dtype=torch.long)
    mask[1, :250] = 0
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False)
    outputs = {}
    with torch.no_grad():
        whole = model.generate(ids, **settings)
        _, dense = calls_while(
            lambda: outputs.setdefault("chunked", model.generate(ids, prefill_chunk_size=128, **settings))
        )
    assert torch.equal(outputs["chunked"], whole)
    # The masks built are the 7 decoding steps' [B, H, 1, K] (padded; the 8th token comes from the prefill), none for
    # the chunks.
    assert dense == 7
