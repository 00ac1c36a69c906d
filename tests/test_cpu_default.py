"""The CPU default path (sdpa, fp32) is exact, makes no denormals and changes no floating-point state.

Heads whose bias holds the whole sequence within `ALIBI_UNDERFLOW_CUTOFF` run fused with the key-only bias; steeper
heads stop where their bias has silenced a key. The rounding of the bias then stays bounded at any length, unlike the
key-only bias on every head, whose error grows with the position (1e-4 at 1k tokens against fp64).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from alibi_lm.modeling.alibi_attention import windowed_alibi_attention
from alibi_lm.modeling.alibi_blocked import ALIBI_UNDERFLOW_CUTOFF, WindowedAlibi
from alibi_lm.modeling.alibi_blocked_attention import key_only_attention, key_only_bias
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import alibi_windows, get_alibi_slopes
from tests.tiny import random_ids, tiny_model

CPU = torch.device("cpu")
FLT_MIN = torch.finfo(torch.float32).tiny


def default_mask(heads: int, length: int) -> WindowedAlibi:
    model = tiny_model(num_attention_heads=heads, hidden_size=8 * heads)
    return model.model.build_attention_mask(build_layout(None, None, 1, length, length, 0, CPU), torch.float32)


@pytest.mark.parametrize("heads, length", [(8, 2048), (8, 65536), (12, 4096), (4, 64)])
def test_no_bias_the_kernel_adds_exceeds_the_cutoff(heads, length):
    mask = default_mask(heads, length)
    slopes = get_alibi_slopes(heads).tolist()
    assert mask.slopes == slopes
    for m, window in zip(slopes, mask.windows):
        if window >= length - 1:  # fused with the key-only bias m * (pos_k - c): |bias| <= m * L / 2
            assert m * (length - 1) <= ALIBI_UNDERFLOW_CUTOFF
        else:  # blocked: the farthest key it keeps has bias -m * window
            assert m * window <= ALIBI_UNDERFLOW_CUTOFF < m * (window + 1)


def test_at_the_training_length_of_the_demo_every_head_is_fused():
    assert all(w >= 63 for w in default_mask(4, 64).windows)  # m * 63 <= 40 for every slope: nothing changes


def attention_weights(q, k, slopes, windows):
    """fp32 softmax weights `[H, L, L]` as a kernel computes them, keys past each head's window masked."""
    length = q.shape[-2]
    d = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    visible = (d >= 0) & (d <= torch.tensor(windows)[:, None, None])
    scores = q[0] @ k[0].transpose(-1, -2) * q.shape[-1] ** -0.5 - torch.tensor(slopes)[:, None, None] * d
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)


def denormal(weights: torch.Tensor) -> int:
    return int(((weights > 0) & (weights < FLT_MIN)).sum())


def test_the_kept_keys_have_no_denormal_weights_where_every_key_would():
    torch.manual_seed(0)
    heads, length = 8, 1024
    q, k = torch.randn(1, heads, length, 64), torch.randn(1, heads, length, 64)
    slopes = get_alibi_slopes(heads).tolist()
    every_key = attention_weights(q, k, slopes, [length] * heads)
    cut = attention_weights(q, k, slopes, default_mask(heads, length).windows)
    assert denormal(every_key) > 10_000  # what x86 cores without flush-to-zero take slow microcode for
    assert denormal(cut) == 0
    # nor do the backward's products of a weight with a small gradient (dS = P * (dP - D)); the cutoff of 80 kept the
    # weights normal but not these, and Intel Xeons took a 1.4x slower backward for them
    gradient = 1e-7 * torch.randn(heads, length, length, generator=torch.Generator().manual_seed(1))
    assert denormal(cut * gradient) == 0
    at_80 = attention_weights(q, k, slopes, alibi_windows(torch.tensor(slopes), 80.0).tolist())
    assert denormal(at_80 * gradient) > 1_000
    # and the keys it drops weighed nothing fp32 can show next to the rest (e^-40 = 4.2e-18 times a score's excess over
    # the query's own, against fp32's resolution of 6e-8 next to 1)
    assert (every_key - cut).abs().max() < 1e-15


def exact_rows(q, k, v, slopes, rows):
    """fp64 ALiBi attention for the query positions `rows`: `[1, H, len(rows), D]`."""
    q, k, v = q.double(), k.double(), v.double()
    out = []
    for i in rows:
        d = i - torch.arange(i + 1, dtype=torch.float64)
        scores = (q[0, :, i, None] @ k[0, :, : i + 1].transpose(-1, -2))[:, 0] * q.shape[-1] ** -0.5  # [H, i + 1]
        weights = torch.softmax(scores - torch.tensor(slopes, dtype=torch.float64)[:, None] * d, -1)
        out.append((weights[:, None] @ v[0, :, : i + 1])[:, 0])  # [H, D]
    return torch.stack(out, 1)[None]


@pytest.mark.parametrize("length", [1024, 16384, 65536])
def test_error_against_fp64_is_bounded_at_any_length(length):
    torch.manual_seed(length)
    heads = 8
    q, k, v = (torch.randn(1, heads, length, 16) for _ in range(3))
    slopes = get_alibi_slopes(heads)
    rows = torch.linspace(0, length - 1, 12).long().tolist()
    exact = exact_rows(q, k, v, slopes.tolist(), rows)
    with torch.no_grad():
        got = windowed_alibi_attention(q, k, v, default_mask(heads, length), 16**-0.5, 0.0)
    error = (got[:, :, rows].double() - exact).abs().max().item()
    with torch.no_grad():  # the key-only bias on every head, the CPU default until 2026-12
        every = key_only_attention(q, k, v, key_only_bias(slopes, length), 16**-0.5)
    before = (every[:, :, rows].double() - exact).abs().max().item()
    print(f"\nL={length}: against fp64, the CPU default {error:.2e}, the key-only bias on every head {before:.2e}")
    assert error < 1e-6
    assert before > 10 * error


def flushed_values(n: int = 1 << 20) -> int:
    """How many of n denormal products come out as zero: > 0 where some thread flushes to zero."""
    return int(((torch.full((n,), 1e-40) * 1.0) == 0).sum())


def test_forward_and_backward_leave_every_threads_floating_point_state_alone():
    assert flushed_values() == 0
    model = tiny_model(num_attention_heads=8, hidden_size=64).train()
    ids = random_ids(1, 512)  # m * 511 > 40 for the three steepest heads: the blocked path runs too
    assert any(w < 511 for w in default_mask(8, 512).windows)
    model(ids, labels=ids).loss.backward()
    assert flushed_values() == 0


def test_logits_match_eager_in_fp64_through_the_model():
    ids = random_ids(1, 1500)
    sdpa = tiny_model(num_attention_heads=8, hidden_size=64)
    eager = tiny_model(num_attention_heads=8, hidden_size=64, attn_implementation="eager").double()
    with torch.no_grad():
        error = (sdpa(ids).logits.double() - eager(ids).logits).abs().max().item()
    assert error < 1e-5


def test_no_sdpa_call_takes_a_mask_together_with_is_causal(monkeypatch):
    """torch 2.14 refuses `attn_mask` with `is_causal=True` in `F.scaled_dot_product_attention` on every backend (2.13
    took it on the fused CPU kernel): the key-only heads call that kernel's aten op instead. The refusal is played
    here, so torch 2.13 catches a call that 2.14 would fail; the result must stay eager's."""
    sdpa = F.scaled_dot_product_attention

    def as_torch_2_14(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        if attn_mask is not None and is_causal:
            raise RuntimeError(
                "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True"
            )
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", as_torch_2_14)
    ids = random_ids(1, 512)  # fused heads and blocked heads both run
    model = tiny_model(num_attention_heads=8, hidden_size=64).train()
    assert {w >= 511 for w in default_mask(8, 512).windows} == {True, False}
    loss = model(ids, labels=ids).loss
    loss.backward()
    eager = tiny_model(num_attention_heads=8, hidden_size=64, attn_implementation="eager").train()
    assert abs(eager(ids, labels=ids).loss.item() - loss.item()) < 1e-5


def test_every_attention_call_of_the_default_takes_the_fused_kernel():
    """sdpa's math kernel (its fallback, which a 3-D query gets on the CPU) writes out every score: it ran the blocked
    heads' first blocks, and a head with window 640 at 1,024 tokens took 4.7 ms instead of 2.2 (Intel Xeon, 2 threads)."""
    model = tiny_model(num_attention_heads=8, hidden_size=64).train()
    ids = random_ids(1, 1500)  # fused heads and blocked heads, with first blocks, both run
    assert {w >= 1499 for w in default_mask(8, 1500).windows} == {True, False}
    with torch.profiler.profile() as profile:
        model(ids, labels=ids).loss.backward()
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


def test_the_model_keeps_its_patterns_across_forwards_and_bounds_them(monkeypatch):
    from alibi_lm.modeling import alibi_blocked, alibi_blocked_attention

    built = []
    block_pattern = alibi_blocked_attention.block_pattern
    monkeypatch.setattr(alibi_blocked_attention, "block_pattern", lambda *a: built.append(a) or block_pattern(*a))
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    ids = random_ids(1, 1500)
    with torch.no_grad():
        first = model(ids).logits
        blocked = sum(w < 1499 for w in default_mask(8, 1500).windows)
        assert len(built) == blocked == 5  # once per blocked head, not per layer
        again = model(ids).logits
    assert len(built) == blocked and torch.equal(
        first, again
    )  # the second forward builds nothing and computes the same
    # past PATTERN_CACHE_BYTES the cache starts over at the next forward, so a sweep of lengths keeps one forward's
    monkeypatch.setattr(alibi_blocked, "PATTERN_CACHE_BYTES", 0)
    with torch.no_grad():
        for length in (600, 1500, 2500):
            model(random_ids(1, length))
            lengths = {key[2] for key in model.model._pattern_cache if key[0] == "key-only"}
            assert lengths == {length}


def test_patterns_kept_from_inference_mode_can_train():
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    ids = random_ids(1, 1500)
    with torch.inference_mode():
        model(ids)
    assert model.model._pattern_cache
    model.train()
    model(ids, labels=ids).loss.backward()  # saves the kept patterns for the backward
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_threads_sharing_a_model_and_its_pattern_cache_compute_what_each_does_alone(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from alibi_lm.modeling import alibi_blocked

    monkeypatch.setattr(alibi_blocked, "PATTERN_CACHE_BYTES", 0)  # every forward starts the shared cache over
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    lengths = [700, 1100, 1500, 900] * 3
    with torch.no_grad():
        alone = {length: model(random_ids(1, length)).logits[0, -1] for length in set(lengths)}

    def forward(length: int) -> torch.Tensor:
        with torch.no_grad():
            return model(random_ids(1, length)).logits[0, -1]

    with ThreadPoolExecutor(4) as pool:
        for length, got in zip(lengths, pool.map(forward, lengths)):
            assert torch.allclose(got, alone[length], atol=1e-5)


def test_a_model_compiles_whole_after_eager_forwards_filled_its_pattern_cache():
    model = tiny_model(num_attention_heads=8, hidden_size=64)
    ids = random_ids(1, 48)
    with torch.no_grad():
        eager = model(ids).logits
    assert model.model._pattern_cache  # the key-only bias, kept
    torch.compiler.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, dynamic=False)(ids).logits  # no graph break over the cache
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
