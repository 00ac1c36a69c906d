"""The Triton flash kernel with ALiBi per tile (`alibi_triton`), run on the CPU in Triton's interpreter.

Run by tests/test_triton_kernel.py in a process started with TRITON_INTERPRET=1 (Triton reads it when imported).
Forward and backward against a float64 reference built from the layout's own rule (`build_dense_mask`, which the
eager path uses): padding, packed documents (also ids that come back after another document), windows, a cache
before the queries, head dimensions that are not a power of two. Tiles the kernel must skip are filled with NaN: one
visit would make the output NaN.
"""

from __future__ import annotations

import pytest
import torch

from alibi_lm.modeling import alibi_triton
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import (
    ALIBI_TRITON,
    alibi_bias,
    alibi_windows,
    build_dense_mask,
    get_alibi_slopes,
    triton_alibi_mask,
)
from alibi_lm.modeling.alibi_triton import alibi_flash_attention
from tests.tiny import random_ids, tiny_model

CPU = torch.device("cpu")
HEADS = 4
SLOPES = get_alibi_slopes(HEADS)


pytestmark = pytest.mark.skipif(not alibi_triton.interpreting(), reason="needs TRITON_INTERPRET=1 at startup")


def reference(query, key, value, layout, slopes, windows, scale):
    """Attention in float64 with the dense additive mask of `layout` (the eager path's mask)."""
    bias = None if slopes is None else (lambda h, distance: alibi_bias(slopes[h].double(), distance.double()))
    mask = build_dense_mask(layout, bias, query.shape[1], torch.float32, windows).double()
    scores = query.double() @ key.double().transpose(-1, -2) * scale + mask
    return torch.softmax(scores, -1) @ value.double()


def leaves(batch, query_length, key_length, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, HEADS, query_length, head_dim)] + [(batch, HEADS, key_length, head_dim)] * 2
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def padding(batch, length, left=(7, 0)):
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, count in enumerate(left):
        mask[row, :count] = 0
    return mask


DOCUMENTS = torch.tensor([[0] * 10 + [1] * 17 + [2] * 13, [0] * 25 + [1] * 15])
# Document 0 comes back after document 1: its tokens must see each other across the gap.
RETURNING = torch.tensor([[0] * 12 + [1] * 9 + [0] * 19, [3] * 40])
WINDOWS = alibi_windows(SLOPES, 3.0)  # 12, 48, 192, 768 tokens

CASES = {
    # name: (attention_mask, document_ids, query_length, key_length, windows, slopes, head_dim)
    "plain": (None, None, 40, 40, None, SLOPES, 24),
    "left padding": (padding(2, 40), None, 40, 40, None, SLOPES, 16),
    "packed documents": (None, DOCUMENTS, 40, 40, None, SLOPES, 32),
    "a document that returns": (None, RETURNING, 40, 40, None, SLOPES, 16),
    "windows": (None, None, 40, 40, WINDOWS, SLOPES, 16),
    # Head 1 sees 48 back: query blocks past 64 have whole key blocks inside the window and masked ones at its edge.
    "windows past a block": (None, None, 100, 100, WINDOWS, SLOPES, 16),
    "windows with padding": (padding(2, 40), None, 40, 40, WINDOWS, SLOPES, 16),
    "a cache before the queries": (None, None, 20, 50, None, SLOPES, 16),
    "everything at once": (padding(2, 37), DOCUMENTS[:, :37], 17, 37, WINDOWS, SLOPES, 16),
    "no bias": (padding(2, 40), None, 40, 40, None, None, 64),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_forward_and_backward_match_the_dense_mask_in_float64(case):
    attention_mask, document_ids, query_length, key_length, windows, slopes, head_dim = CASES[case]
    layout = build_layout(attention_mask, document_ids, 2, query_length, key_length, key_length - query_length, CPU)
    query, key, value = leaves(2, query_length, key_length, head_dim)
    scale = head_dim**-0.5
    expected = reference(query, key, value, layout, slopes, windows, scale)
    mask = triton_alibi_mask(layout, slopes, windows, HEADS)
    out = alibi_flash_attention(query, key, value, mask, scale)
    assert out.dtype == torch.float32 and out.shape == query.shape
    assert (out - expected).abs().max() < 1e-5

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad.double())
    grads = torch.autograd.grad(out, (query, key, value), grad)
    for name, got, want in zip("qkv", grads, expected_grads):
        assert (got - want).abs().max() < 1e-5, f"d{name}"


@pytest.mark.parametrize("case", ["plain", "everything at once"])
def test_the_custom_op_passes_torch_library_s_opcheck(case):
    """Schema, fake tensors (shapes and strides as the kernels write them), the autograd registration and AOT
    dispatch with dynamic shapes, as `torch.library.opcheck` tests them; the queries laid out as the model passes
    them (`[B, Q, H, D]` transposed, not contiguous)."""
    attention_mask, document_ids, query_length, key_length, windows, slopes, head_dim = CASES[case]
    layout = build_layout(attention_mask, document_ids, 2, query_length, key_length, key_length - query_length, CPU)
    query, key, value = leaves(2, query_length, key_length, head_dim)
    query = query.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    mask = triton_alibi_mask(layout, slopes, windows, HEADS)
    arguments = (
        query, key, value, mask.log2_slopes, mask.windows, mask.key_positions, mask.key_valid, mask.document_ids,
        mask.document_start, mask.document_end, mask.past_length, head_dim**-0.5,
    )  # fmt: skip
    assert not query.is_contiguous()
    results = torch.library.opcheck(alibi_triton.flash_forward, arguments)
    assert set(results.values()) == {"SUCCESS"} and len(results) == 4, results


def test_grouped_kv_heads_are_read_in_place_and_their_gradients_summed():
    """4 query heads on 2 KV heads, padded: against the reference on repeated keys (whose backward sums the group)."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(2, HEADS, 40, 16, generator=generator).requires_grad_()
    key, value = (torch.randn(2, 2, 40, 16, generator=generator).requires_grad_() for _ in "kv")
    layout = build_layout(padding(2, 40), None, 2, 40, 40, 0, CPU)
    repeated = [tensor.repeat_interleave(2, dim=1) for tensor in (key, value)]
    expected = reference(query, *repeated, layout, SLOPES, None, 0.25)
    out = alibi_flash_attention(query, key, value, triton_alibi_mask(layout, SLOPES, None, HEADS), 0.25)
    assert (out - expected).abs().max() < 1e-5
    grad = torch.randn(out.shape, generator=generator)
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad.double())
    for name, got, want in zip("qkv", torch.autograd.grad(out, (query, key, value), grad), expected_grads):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5, f"d{name}"


@pytest.mark.parametrize("case", ["plain", "windows past a block", "a cache before the queries"])
def test_the_bias_as_one_vector_per_tile_is_exact_too(case, monkeypatch):
    """The 16-bit inputs' form (`ROW_SHIFT`), forced onto fp32: the row shift must come out of the stored LSE."""
    monkeypatch.setattr(alibi_triton, "ROW_SHIFT_DTYPES", (torch.float32,))
    test_forward_and_backward_match_the_dense_mask_in_float64(case)


def test_half_precision_inputs_round_as_half_precision():
    """fp16 in and out (the GPU's 16-bit path; numpy has no bf16): errors at fp16's resolution, not more."""
    layout = build_layout(None, None, 2, 70, 70, 0, CPU)
    query, key, value = (tensor.detach().half().requires_grad_() for tensor in leaves(2, 70, 70, 32))
    expected = reference(query, key, value, layout, SLOPES, None, 32**-0.5)
    out = alibi_flash_attention(query, key, value, triton_alibi_mask(layout, SLOPES, None, HEADS), 32**-0.5)
    assert out.dtype == torch.float16
    assert (out.double() - expected).abs().max() < 2e-3
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad.double())
    for got, want in zip(torch.autograd.grad(out, (query, key, value), grad.half()), expected_grads):
        assert got.dtype == torch.float16 and (got.double() - want).abs().max() < 4e-3


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_tiles_before_a_document_or_past_a_window_are_never_read():
    """NaN keys and values where no query of a block may look: one visited tile would make its rows NaN."""
    length, block = 64, alibi_triton.INTERPRETER_BLOCK
    query, key, value = (tensor.detach() for tensor in leaves(1, length, length, 16))
    key[:, :, :32], value[:, :, :32] = float("nan"), float("nan")  # document 0, two whole tiles

    documents = torch.tensor([[0] * 32 + [1] * 32])
    layout = build_layout(None, documents, 1, length, length, 0, CPU)
    out = alibi_flash_attention(query, key, value, triton_alibi_mask(layout, SLOPES, None, HEADS), 0.25)
    assert out[:, :, 32:].isfinite().all()  # document 1 never visits document 0's tiles

    # Head 0 sees 12 tokens back: query blocks from slot 48 on start at key 48 - 12 = 36, in tile 32.
    layout = build_layout(None, None, 1, length, length, 0, CPU)
    out = alibi_flash_attention(query, key, value, triton_alibi_mask(layout, SLOPES, WINDOWS, HEADS), 0.25)
    assert out[:, 0, 48:].isfinite().all()
    assert out[:, 0, 32:48].isnan().any()  # the block at 32 does read tile 16 (and the NaN check can fail)
    assert block == 16


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_a_compiled_forward_skips_tiles_before_a_document_too():
    """The document bounds are built inside the compiled graph (static shapes): document 1 never reads the NaN tiles of
    document 0 there either. Bounds built only outside compilation would let every tile be visited."""
    length = 64
    query, key, value = (tensor.detach() for tensor in leaves(1, length, length, 16))
    key[:, :, :32], value[:, :, :32] = float("nan"), float("nan")

    def attend(query, key, value, documents):
        layout = build_layout(None, documents, 1, length, length, 0, CPU)
        return alibi_flash_attention(query, key, value, triton_alibi_mask(layout, SLOPES, None, HEADS), 0.25)

    torch._dynamo.reset()
    out = torch.compile(attend, fullgraph=True)(query, key, value, torch.tensor([[0] * 32 + [1] * 32]))
    assert out[:, :, 32:].isfinite().all()


def test_the_model_on_alibi_triton_matches_eager_in_logits_gradients_and_generation():
    """Padding and packed sequences through the model, GQA included; greedy generation decodes through sdpa."""
    model = tiny_model(num_key_value_heads=2)
    ids = random_ids(2, 40)
    attention_mask = padding(2, 40)
    eager = model(ids, attention_mask=attention_mask).logits
    model.set_attn_implementation(ALIBI_TRITON)
    triton_logits = model(ids, attention_mask=attention_mask).logits
    assert (triton_logits - eager)[attention_mask.bool()].abs().max() < 1e-5

    positions = torch.cat([torch.arange(15), torch.arange(25)])[None]  # two documents packed in one row
    packed = model(ids[:1], position_ids=positions).logits
    model.set_attn_implementation("eager")
    assert (packed - model(ids[:1], position_ids=positions).logits).abs().max() < 1e-5

    expected_tokens = model.generate(ids[:, :12], max_new_tokens=6, do_sample=False)
    model.train()
    model(ids, labels=ids).loss.backward()
    expected_grads = [parameter.grad.clone() for parameter in model.parameters()]
    model.zero_grad()
    model.set_attn_implementation(ALIBI_TRITON)
    model(ids, labels=ids).loss.backward()
    for parameter, expected in zip(model.parameters(), expected_grads):
        assert (parameter.grad - expected).abs().max() < 1e-5
    model.eval()
    assert torch.equal(model.generate(ids[:, :12], max_new_tokens=6, do_sample=False), expected_tokens)


def test_under_torch_compile_the_kernels_are_graph_nodes_and_the_model_stays_exact():
    """The kernels are custom ops: dynamo puts them in the graph (one graph, no break around attention; the
    `torch.compiler.disable` they replaced made one graph per layer), and a compiled training step gives eager's loss
    and gradients, with padding and packed documents too."""
    model = tiny_model(num_key_value_heads=2)
    ids = random_ids(2, 40)
    padding = torch.ones_like(ids)
    padding[0, :5] = 0
    packed = torch.cat([torch.arange(15), torch.arange(25)]).expand(2, 40)
    model.train()
    for inputs in (dict(), dict(attention_mask=padding), dict(position_ids=packed)):
        model.set_attn_implementation("sdpa")
        model.zero_grad()
        expected_loss = model(ids, labels=ids, **inputs).loss
        expected_loss.backward()
        expected_grads = [parameter.grad.clone() for parameter in model.parameters()]
        model.zero_grad()
        model.set_attn_implementation(ALIBI_TRITON)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(ids, labels=ids, **inputs)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        loss = torch.compile(model)(ids, labels=ids, **inputs).loss
        loss.backward()
        assert abs(loss.item() - expected_loss.item()) < 1e-5
        for parameter, expected in zip(model.parameters(), expected_grads):
            assert (parameter.grad - expected).abs().max() < 1e-5


def test_static_cache_generation_compiled_gives_eager_tokens():
    """Prefill on the kernel with a static cache (the cache's length comes in as a tensor) under a compiled forward:
    the greedy tokens of eager sdpa."""
    model = tiny_model().eval()
    prompt = random_ids(1, 20)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    model.set_attn_implementation(ALIBI_TRITON)
    model.forward = torch.compile(model.forward)
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(generated, expected)
