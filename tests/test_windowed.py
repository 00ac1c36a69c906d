"""Windowed ALiBi (`alibi_window_cutoff`): head h sees only the floor(T / m_h) tokens before a query.

The blocked sdpa path, the dense eager mask and flex's per-head BlockMask must compute the same function, which
a naive reference written here defines; a cutoff wider than the sequence must give dense ALiBi exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F
from transformers import DynamicCache

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.modeling.alibi_attention import windowed_alibi_attention
from alibi_lm.modeling.alibi_blocked import WINDOWED_WORK_LIMIT, WindowedAlibi, windowed_work_ratio
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import alibi_windows, get_alibi_slopes
from tests.tiny import perturb, random_ids, tiny_config, tiny_model


def naive_windowed_attention(q, k, v, slopes, windows, scale):
    """softmax(q k^T * scale - m_h d) v over keys with 0 <= d <= w_h, one head and one query at a time."""
    batch, heads, length, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                lo = max(0, i - windows[h])
                scores = (k[b, h, lo : i + 1] @ q[b, h, i]) * scale - slopes[h] * torch.arange(i - lo, -1, -1.0)
                out[b, h, i] = scores.softmax(-1) @ v[b, h, lo : i + 1]
    return out


def test_windows_follow_from_slope_and_cutoff():
    slopes = get_alibi_slopes(8)  # 1/2 ... 1/256
    assert alibi_windows(slopes, 20).tolist() == [40, 80, 160, 320, 640, 1280, 2560, 5120]
    assert alibi_windows(slopes, 12.5).tolist() == [25, 50, 100, 200, 400, 800, 1600, 3200]
    # A key at the window's edge has bias >= -T; one further has bias < -T.
    windows = alibi_windows(get_alibi_slopes(6), 7.3)
    for m, w in zip(get_alibi_slopes(6).tolist(), windows.tolist()):
        assert m * w <= 7.3 < m * (w + 1)


@pytest.mark.parametrize(
    "length, windows, heads",
    [(300, [3, 17, 130, 999], 4), (64, [0, 5, 63, 64], 4), (1100, [40, 300, 2000], 3), (129, [128, 1], 2)],
)
def test_blocked_path_matches_the_naive_reference(length, windows, heads):
    torch.manual_seed(length)
    q, k, v = (torch.randn(2, heads, length, 8) for _ in range(3))
    slopes = get_alibi_slopes(heads).tolist()
    got = windowed_alibi_attention(q, k, v, WindowedAlibi(slopes, windows), scaling=0.35, dropout=0.0)
    expected = naive_windowed_attention(q, k, v, slopes, windows, 0.35)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_blocked_path_gradients_match_the_dense_masked_kernel():
    torch.manual_seed(0)
    heads, length, windows = 4, 700, [5, 60, 200, 1000]
    slopes = get_alibi_slopes(heads)
    inputs = [torch.randn(1, heads, length, 8, requires_grad=True) for _ in range(3)]
    blocked = windowed_alibi_attention(*inputs, WindowedAlibi(slopes.tolist(), windows), scaling=0.35, dropout=0.0)
    grads = torch.autograd.grad(blocked.square().sum(), inputs)
    d = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    visible = (d >= 0) & (d <= torch.tensor(windows)[:, None, None])
    mask = torch.where(visible, -slopes[:, None, None] * d, float("-inf"))
    dense = F.scaled_dot_product_attention(*inputs, attn_mask=mask, scale=0.35)
    torch.testing.assert_close(blocked, dense, atol=2e-6, rtol=0)
    for got, expected in zip(grads, torch.autograd.grad(dense.square().sum(), inputs)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def windowed_model(cutoff: float | None, implementation: str = "sdpa", **overrides) -> AlibiForCausalLM:
    model = tiny_model(attn_implementation=implementation, num_attention_heads=4, **overrides)
    model.config.alibi_window_cutoff = cutoff
    return model


def test_sdpa_takes_the_blocked_path_where_it_saves_work_and_agrees_with_eager():
    sdpa, eager = windowed_model(2.0), windowed_model(2.0, "eager")  # windows 8, 32, 128, 512
    # At 2,048 tokens the blocks cost 29% of the causal triangle: the blocked path. At 300, more than the triangle:
    # dense ALiBi on the key-only fast path, which the windowed model approximates anyway.
    assert (
        windowed_work_ratio([8, 32, 128, 512], 2048)
        < WINDOWED_WORK_LIMIT
        < windowed_work_ratio([8, 32, 128, 512], 300)
    )
    assert isinstance(mask_for(sdpa, 2048), WindowedAlibi) and mask_for(sdpa, 2048).windows == [8, 32, 128, 512]
    # At 300 tokens the windows would cost more than the triangle. A cutoff of 2 is a window that matters: applied
    # exactly all the same (the two heads that see the whole sequence fused, the others in blocks) ...
    assert mask_for(sdpa, 300).windows == [8, 32, 128, 512]
    # ... while from DENSE_SHORTCUT_CUTOFF (16) on, dense ALiBi runs there: the dense model's mask, each head's reach
    # the distance where its bias silences a key (ALIBI_UNDERFLOW_CUTOFF / m_h), wider than the window of 20 / m_h.
    dense_mask = mask_for(windowed_model(None), 300)
    assert mask_for(windowed_model(20.0), 300).windows == dense_mask.windows
    assert all(window > 20 / slope for window, slope in zip(dense_mask.windows, dense_mask.slopes))
    ids = random_ids(1, 2048)
    with torch.no_grad():
        windowed, reference = sdpa(ids).logits, eager(ids).logits
        dense = windowed_model(None)(ids).logits
    torch.testing.assert_close(windowed, reference, atol=1e-5, rtol=0)
    assert (windowed - dense).abs().max() > 1e-3  # the window is real: 8 tokens for the steepest head


def mask_for(model, length: int):
    layout = build_layout(None, None, 1, length, length, 0, torch.device("cpu"))
    return model.model.build_attention_mask(layout, torch.float32)


def test_a_cutoff_wider_than_the_sequence_is_dense_alibi():
    ids = random_ids(1, 200)
    with torch.no_grad():
        dense = windowed_model(None)(ids).logits
        wide = windowed_model(200 * 1.0)(ids).logits  # steepest head: 200 / 0.25 = 800 > 200 tokens
    torch.testing.assert_close(wide, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_and_cached_decoding_keep_the_window(implementation):
    # Left padding and decoding steps take the dense [B, H, Q, K] mask, which carries the window too; at 2,048
    # tokens the unpadded row takes the blocked path on sdpa.
    model = windowed_model(2.0, implementation)  # windows 8, 32, 128, 512
    ids = random_ids(1, 2048)
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 7, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        alone = model(ids).logits
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 7:], alone, atol=1e-5, rtol=0)
        out = model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
        # Each greedy token is the argmax of a full (uncached) windowed forward over the sequence so far.
        full = model(out).logits
    assert torch.equal(out[0, 2048:], full[0, 2047:-1].argmax(-1))


def test_flex_uses_a_per_head_block_mask_that_skips_far_blocks():
    ids = random_ids(1, 1024)
    flex = windowed_model(2.0, "flex_attention")  # windows 8, 32, 128, 512: blocks of 128
    eager = windowed_model(2.0, "eager")
    block_mask = mask_for(flex, 1024).block_mask
    blocks_per_head = block_mask.kv_num_blocks[0].sum(-1) + block_mask.full_kv_num_blocks[0].sum(-1)  # [H]
    # Query block i (128 tokens) reaches key blocks i-1..i for windows 8, 32 and 128, and i-4..i for 512; causal
    # attention touches 1 + 2 + ... + 8 = 36 blocks.
    assert blocks_per_head.tolist() == [15, 15, 15, 30]
    with torch.no_grad():
        torch.testing.assert_close(flex(ids).logits, eager(ids).logits, atol=1e-4, rtol=0)


def test_config_keeps_the_cutoff_through_save_and_load(tmp_path):
    model = AlibiForCausalLM(tiny_config(alibi_window_cutoff=20.0))
    model.save_pretrained(tmp_path)
    loaded = AlibiForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.alibi_window_cutoff == 20.0
    assert loaded.model.position_encoding.windows("cpu").tolist() == [80, 320, 1280, 5120]  # slopes 1/4 ... 1/256
    # A cutoff can also be given at load time, as any config field.
    assert AlibiForCausalLM.from_pretrained(tmp_path, alibi_window_cutoff=8.0).config.alibi_window_cutoff == 8.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"alibi_window_cutoff": 0}, "alibi_window_cutoff must be None or a positive number, got 0"),
        ({"alibi_window_cutoff": -3.0}, "alibi_window_cutoff must be None or a positive number"),
        ({"alibi_window_cutoff": math.inf}, "alibi_window_cutoff must be None or a positive number"),
        ({"alibi_window_cutoff": "20"}, "alibi_window_cutoff must be None or a positive number"),
        ({"alibi_window_cutoff": 20, "position_encoding": "rotary"}, "needs position_encoding='alibi'"),
    ],
)
def test_bad_cutoffs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        AlibiConfig(**overrides)


# ---------------------------------------------------------------------------------------------------------
# `alibi-lm window`: what a cutoff drops, against exact dense ALiBi


def test_measure_cutoffs_tells_a_harmless_cutoff_from_a_harmful_one():
    from alibi_lm.window import measure_cutoffs

    model = tiny_model()  # 4 heads, slopes 1/4 ... 1/256, L = 16
    report = measure_cutoffs(
        model, random_ids(1, 1024)[0], cutoffs=[0.5, 1000.0], multiples=[1, 16, 64], progress=False
    )
    dense, harmful, harmless = report.cutoffs
    assert dense.cutoff is None and dense.windows == [] and dense.greedy_identical
    assert harmful.windows == [2, 8, 32, 128] and harmless.windows == [4000, 16000, 64000, 256000]
    assert harmful.max_dropped_mass > 0.01 and harmless.max_dropped_mass == 0.0
    assert min(harmful.max_logit_diff.values()) > 1e-3
    assert max(harmless.max_logit_diff.values()) < 1e-5 and harmless.greedy_identical
    assert harmless.ppl_windowed == pytest.approx(harmless.ppl_dense, rel=1e-6)
    assert sorted(harmful.max_logit_diff) == [16, 256, 1024]
    assert model.config.alibi_window_cutoff is None  # switched back off
    # The advice: the harmful cutoff saves work but drops mass; the harmless one drops nothing but saves nothing at
    # 1,024 tokens (its windows hold the sequence), so dense ALiBi stays; lift the mass tolerance and 0.5 wins.
    assert harmful.work_ratio < 0.5 and harmless.work_ratio >= 1.0
    assert report.recommend() is None
    assert "keep dense ALiBi (alibi_window_cutoff=None)" in report.advice("m")
    assert "the cutoffs that would (0.5) go past the tolerances" in report.advice("m")
    report.cutoffs.remove(harmful)
    assert "no cutoff's windows are short enough to save work at 1,024 tokens" in report.advice("m")
    report.cutoffs.insert(1, harmful)
    assert report.recommend(max_dropped_mass=1.0, max_ppl_change=10.0) is harmful
    assert "alibi_window_cutoff=0.5" in report.advice("m", max_dropped_mass=1.0, max_ppl_change=10.0)
    assert report.to_dict()["recommended_cutoff"] is None


def test_the_advice_picks_the_least_work_within_the_tolerances():
    from alibi_lm.window import CutoffReport, WindowReport

    def row(cutoff, mass, ppl, work):
        return CutoffReport(cutoff, [1], mass, {}, 10.0, 10.0 * (1 + ppl), True, work_ratio=work)

    report = WindowReport("m", 16, [0.5], 100, 256, 128, work_length=1024)
    report.cutoffs = [row(None, 0.0, 0.0, 1.0), row(12.0, 2e-3, 0.0, 0.2), row(20.0, 5e-4, 5e-4, 0.3),
                      row(40.0, 1e-5, 1e-5, 0.5), row(80.0, 0.0, -2e-3, 0.1)]  # fmt: skip
    assert report.recommend().cutoff == 20.0  # 12 drops too much mass, 80 moves the perplexity too far
    advice = report.advice("runs/model")
    assert "alibi_window_cutoff=20" in advice and "30% of dense attention's scores at 1,024 tokens" in advice
    assert "from_pretrained('runs/model', alibi_window_cutoff=20)" in advice
    assert report.recommend(max_dropped_mass=1e-4).cutoff == 40.0


def test_window_cli_writes_its_table_and_refuses_bad_input(tmp_path, capsys):
    from alibi_lm.cli import main
    from tests.tiny import cli_error, saved_folder

    folder = saved_folder(tiny_model(), tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 97 + 1}" for i in range(1100)))
    argv = ["window", str(folder), "--data", str(text), "--cutoffs", "20", "--multiples", "1", "4", "--no-progress"]
    assert main([*argv, "--json", str(tmp_path / "w.json"), "--markdown", str(tmp_path / "w.md")]) == 0
    assert "| 20 | 80, 320, 1280, 5120 |" in (tmp_path / "w.md").read_text()
    out = capsys.readouterr().out
    assert "| none (dense, default kernel) | all | 0 |" in out
    assert out.rstrip().splitlines()[-1].startswith("Recommended: ")  # it ends with one recommendation
    assert "tolerances, at least 0" in cli_error([*argv, "--max-ppl-change", "-0.1"], capsys)

    assert "must be positive numbers" in cli_error([*argv[:-4], "--cutoffs", "-1", "--no-progress"], capsys)
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3")
    assert "fewer than the longest evaluation length" in cli_error(
        ["window", str(folder), "--data", str(short), "--no-progress"], capsys
    )
    # A bad record past the tokens the measurement needs is never read (a Hub split of terabytes is not read whole).
    words = text.read_text().split()
    records = tmp_path / "records.jsonl"
    lines = [json.dumps({"text": " ".join(words[start : start + 100])}) for start in range(0, len(words), 100)]
    records.write_text("\n".join([*lines, '{"text": 5}']) + "\n")
    lazy = ["window", str(folder), "--data", str(records), "--cutoffs", "20", "--multiples", "1", "--no-progress"]
    assert main([*lazy, "--max-eval-tokens", "300"]) == 0
    assert "Record 11 is the first" in cli_error([*lazy, "--max-eval-tokens", "100000"], capsys)
    rotary = saved_folder(tiny_model(position_encoding="rotary"), tmp_path / "rotary")
    assert "needs an ALiBi model" in cli_error(["window", str(rotary), "--data", str(text)], capsys)
    assert "model folder not found" in cli_error(["window", str(tmp_path / "missing")], capsys)


# ---------------------------------------------------------------------------------------------------------------
# The cache that forgets what no head can see


class FullCache(DynamicCache):
    """A cache of another class: the model leaves it as it is, so it keeps every key (the reference)."""


def filled_cache(model, length: int) -> DynamicCache:
    cache = DynamicCache()
    with torch.no_grad():
        model(random_ids(1, length), cache=cache)
    return cache


def test_a_dynamic_cache_turns_sliding_once_it_holds_more_keys_than_any_head_reads():
    model = tiny_model(alibi_window_cutoff=2.0)  # slopes 1/4 ... 1/256: windows 8, 32, 128, 512
    assert model.model.widest_window() == model.model.keys_to_keep() == 512
    assert tiny_model().model.widest_window() is None
    short = filled_cache(model, 512)
    model.model.forget_what_no_head_sees(short)  # no key to forget yet: transformers' own layers stay
    assert {type(layer).__name__ for layer in short.layers} == {"DynamicLayer"}
    cache = filled_cache(model, 600)
    keys = cache.layers[1].keys.clone()
    model.model.forget_what_no_head_sees(cache)
    assert [(type(layer).__name__, layer.sliding_window) for layer in cache.layers] == [
        ("DynamicSlidingWindowLayer", 513)
    ] * 2
    assert cache.get_seq_length() == 600 and torch.equal(cache.layers[1].keys, keys[:, :, -512:])
    assert all(layer.record_past for layer in cache.layers)  # assisted decoding can still roll back
    untouched = FullCache()
    model(random_ids(1, 600), cache=untouched)  # a cache of another class
    assert {type(layer).__name__ for layer in untouched.layers} == {"DynamicLayer"}
    model.config.alibi_window_cutoff = None  # switched off on a loaded model: dense ALiBi's reach on the CPU default
    assert model.model.keys_to_keep() == 10240
    fresh = filled_cache(model, 600)
    model.model.forget_what_no_head_sees(fresh)
    assert {type(layer).__name__ for layer in fresh.layers} == {"DynamicLayer"}


@pytest.mark.parametrize(
    ("overrides", "device", "dtype", "kept"),
    [
        ({}, "cpu", torch.float32, 10240),  # the CPU default drops keys past 40 / (1/256)
        ({}, "cpu", torch.bfloat16, 10240),
        ({"alibi_max_bias": 1.0}, "cpu", torch.float32, 80),  # slopes 2^-1/4 ... 1/2
        ({"alibi_max_bias": 1.0, "alibi_window_cutoff": 60.0}, "cpu", torch.float32, 80),  # silenced before its window
        ({"alibi_max_bias": 1.0, "alibi_window_cutoff": 30.0}, "cpu", torch.float32, 60),
        ({"alibi_max_bias": 1.0, "alibi_window_cutoff": 30.0}, "meta", torch.float32, 60),  # windows everywhere
        ({}, "cpu", torch.float64, None),  # no blocked plan in fp64: every key is read
        ({}, "meta", torch.float32, None),  # off the CPU (flex or Triton on a GPU): dense ALiBi reads every key
        ({"attn_implementation": "eager"}, "cpu", torch.float32, None),  # the reference keeps every key
        ({"position_encoding": "sinusoidal"}, "cpu", torch.float32, None),
    ],
)
def test_the_keys_a_cache_keeps_are_those_some_head_can_still_read(overrides, device, dtype, kept):
    model = tiny_model(**overrides)
    assert model.model.keys_to_keep(torch.device(device), dtype) == kept


def test_dense_alibi_on_the_cpu_default_forgets_silenced_keys_and_keeps_its_logits():
    # Dense ALiBi's CPU default drops each key past e^-40 of bias: decoding need not keep those either. Slopes down to
    # 1/2 (alibi_max_bias=1): no head reads a key 81 tokens back.
    model = tiny_model(alibi_max_bias=1.0)
    ids = random_ids(2, 20)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    settings = dict(attention_mask=mask, max_new_tokens=300, min_new_tokens=300, do_sample=False)
    settings |= dict(return_dict_in_generate=True, output_logits=True)
    eager = tiny_model(alibi_max_bias=1.0, attn_implementation="eager")
    with torch.no_grad():
        full = eager.generate(ids, cache=FullCache(), **settings)  # every key kept and read
        out = model.generate(ids, **settings)
    assert torch.equal(out.sequences, full.sequences)
    worst = max(float((a - b).abs().max()) for a, b in zip(out.logits, full.logits))
    assert worst < 1e-5
    cache = out.past_key_values
    assert {type(layer).__name__ for layer in cache.layers} == {"DynamicSlidingWindowLayer"}
    assert cache.layers[0].keys.shape[-2] == 81 < out.sequences.shape[1]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_windowed_generation_drops_old_keys_and_keeps_its_tokens(backend):
    model = tiny_model(alibi_window_cutoff=2.0, attn_implementation=backend).eval()
    ids = random_ids(2, 30)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    settings = dict(attention_mask=mask, max_new_tokens=600, min_new_tokens=600, do_sample=False)
    with torch.no_grad():
        full = model.generate(ids, cache=FullCache(), **settings)  # every key kept, as before
        out = model.generate(ids, return_dict_in_generate=True, **settings)  # the cache generate builds itself
    cache = out.past_key_values
    assert {type(layer).__name__ for layer in cache.layers} == {"DynamicSlidingWindowLayer"}
    # past the widest window: the 512 keys some head can see, and the one the last step added
    assert cache.layers[0].keys.shape[-2] == 513 < out.sequences.shape[1]
    assert torch.equal(out.sequences, full)


def test_a_sliding_cache_gives_the_logits_of_a_full_one_step_by_step():
    model = tiny_model(alibi_window_cutoff=1.0).eval()  # windows 4, 16, 64, 256: 256 keys kept
    ids = random_ids(1, 400)
    full, sliding = FullCache(), DynamicCache(config=model.config)
    with torch.no_grad():
        for cache in (full, sliding):
            model(ids[:, :100], cache=cache)  # prefill in one chunk
        worst = 0.0
        for t in range(100, 400):
            a = model(ids[:, t : t + 1], cache=full).logits
            b = model(ids[:, t : t + 1], cache=sliding).logits
            worst = max(worst, float((a - b).abs().max()))
    assert worst < 1e-5
    assert sliding.layers[0].keys.shape[-2] == 257 and full.layers[0].keys.shape[-2] == 400


@pytest.mark.parametrize("cutoff", [0.01, 1.0, 8.0])
def test_a_small_cutoff_is_applied_exactly_on_the_cpu_fast_path(cutoff):
    # Short sequences, where the windows hold most of the sequence and a cutoff of 16 or more would run dense ALiBi
    # (faster, and within e^-16 of it): a small cutoff is a window that matters, so sdpa's default CPU path must
    # give eager's windowed logits (it gave dense ALiBi's, 0.29 off at a window of 0 to 1 tokens).
    model = tiny_model(alibi_window_cutoff=cutoff, attn_implementation="eager").eval()
    ids = random_ids(2, 50)
    with torch.no_grad():
        eager = model(ids).logits
        model.set_attn_implementation("sdpa")
        torch.testing.assert_close(model(ids).logits, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("helper", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_decoding_rolls_a_windowed_models_sliding_cache_back(helper):
    model = tiny_model(alibi_window_cutoff=1.0).eval()  # widest window 256
    extra = (
        {"assistant_model": tiny_model(alibi_window_cutoff=1.0, seed=1).eval()} if helper == "assistant_model" else {}
    )
    extra |= {"prompt_lookup_num_tokens": 5} if helper == "prompt_lookup_num_tokens" else {}
    ids = random_ids(1, 20)
    settings = dict(max_new_tokens=400, min_new_tokens=400, do_sample=False)
    with torch.no_grad():
        greedy = model.generate(ids, **settings)
        assert torch.equal(model.generate(ids, **extra, **settings), greedy)


def test_a_windowed_model_decodes_compiled_with_a_static_cache():
    # A static cache is left full (its size is fixed anyway): transformers' sliding static layers would move the key
    # offset at every step, a recompile per token under fullgraph=True.
    from transformers import CompileConfig

    model = tiny_model(alibi_window_cutoff=0.25).eval()  # windows 1, 4, 16, 64
    ids = random_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    options = dict(attention_mask=mask, max_new_tokens=100, min_new_tokens=100, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        dynamic = model.generate(ids, **options)
        compile_config = CompileConfig(fullgraph=True, dynamic=False)
        compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        torch.compiler.reset()
        static = model.generate(ids, cache_implementation="static", compile_config=compile_config, **options)
    assert hasattr(model, "_compiled_call") and torch.equal(static, dynamic)


def test_a_compiled_forward_reads_a_sliding_static_cache_as_eager_does():
    # A static cache of transformers' sliding layers (a config with sliding_window, as a user may build one): generate
    # hands each step a mask of the window only. Compiled, the forward padded it on the right as a static cache's
    # empty tail, hiding the new token: 29 of 30 greedy tokens differed.
    import copy

    from transformers import StaticCache

    model = tiny_model(alibi_max_bias=2.0, alibi_window_cutoff=4.0, attn_implementation=None)  # windows of 5-16
    model = perturb(model, seed=1).eval()  # weights whose greedy tokens depend on what is seen
    config = copy.deepcopy(model.config)
    config.sliding_window = model.model.widest_window() + 1
    ids = random_ids(1, 40, seed=3)
    options = dict(attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        dynamic = model.generate(ids, **options)
        torch.compiler.reset()
        model.forward = torch.compile(model.forward)
        static = model.generate(ids, cache=StaticCache(config=config, max_cache_len=80), **options)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize(
    "overrides, prompt, kept", [({"alibi_window_cutoff": 4.0}, 30, 16), ({}, 150, 160)], ids=["windowed", "dense"]
)
def test_a_compiled_forward_forgets_in_generate_as_an_eager_one_does(overrides, prompt, kept):
    # A compiled forward cannot swap its cache's layers; generate's step preparation (eager) does it instead. Steep
    # slopes (alibi_max_bias=2): windows of 5-16 tokens, or dense keys silenced past 160 on the CPU.
    model = perturb(tiny_model(alibi_max_bias=2.0, attn_implementation=None, **overrides), seed=1).eval()
    assert model.model.keys_to_keep() == kept
    ids = random_ids(2, prompt, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    options = dict(attention_mask=mask, max_new_tokens=50, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        eager = model.generate(ids, **options)
        torch.compiler.reset()
        model.forward = torch.compile(model.forward)
        compiled = model.generate(ids, return_dict_in_generate=True, **options)
    layer = compiled.past_key_values.layers[0]
    assert type(layer).__name__ == "DynamicSlidingWindowLayer" and layer.keys.shape[-2] == kept + 1
    assert torch.equal(compiled.sequences, eager)


@pytest.mark.parametrize("overrides", [{"alibi_window_cutoff": 1.0}, {"alibi_max_bias": 1.0}])  # windowed; dense
def test_a_prepared_4d_mask_after_a_sliding_cache_branches_as_after_a_full_one(overrides):
    # Three continuations of 300 cached tokens in one forward (transformers' custom 4-D mask, positions given): the
    # sliding cache holds only the last keys, so the mask's columns and positions are cut to them.
    model = tiny_model(**overrides)
    ids = random_ids(1, 300)
    ends = torch.tensor([[7, 8, 9]])
    visible = torch.ones(3, 303).tril(300).bool()
    visible[:, 300:] = torch.eye(3, dtype=torch.bool)
    positions = torch.tensor([list(range(300)) + [300] * 3])
    results = []
    with torch.no_grad():
        for cache in (FullCache(), DynamicCache()):
            model(ids, cache=cache)
            results.append(model(ends, cache=cache, attention_mask=visible[None, None], position_ids=positions).logits)
            kinds = {type(layer).__name__ for layer in cache.layers}
    assert kinds == {"DynamicSlidingWindowLayer"}
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=0)
    with torch.no_grad():  # each branch alone, after the prefix
        alone = model(torch.cat([ids.expand(3, -1), ends.T], dim=1)).logits[:, -1]
    torch.testing.assert_close(results[1][0], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(
    "overrides, prompt, kept", [({"alibi_window_cutoff": 4.0}, 30, 16), ({}, 150, 160)], ids=["windowed", "dense"]
)
def test_generate_builds_a_static_cache_of_the_keys_some_head_reads(overrides, prompt, kept, compiled):
    # cache_implementation="static" sized to max_length would hold every token; here it is transformers' static cache
    # of sliding layers, kept + 1 tokens each, and the greedy tokens are the dynamic cache's. Where generate compiles
    # the forward, our StaticWindowLayer of as many tokens (transformers' sliding layers would cost a graph per step:
    # fullgraph with dynamic=False fails at the limit). Steep slopes (alibi_max_bias=2): windows of 5-16 tokens, or
    # dense keys silenced past 160 on the CPU.
    from transformers import CompileConfig

    model = perturb(tiny_model(alibi_max_bias=2.0, attn_implementation=None, **overrides), seed=1).eval()
    ids = random_ids(2, prompt, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    options = dict(attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0)
    static_options = dict(cache_implementation="static", return_dict_in_generate=True)
    if compiled:
        compile_config = CompileConfig(fullgraph=True, dynamic=False)
        compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        static_options["compile_config"] = compile_config
    with torch.no_grad():
        dynamic = model.generate(ids, **options)
        torch.compiler.reset()
        static = model.generate(ids, **options, **static_options)
    layers = static.past_key_values.layers
    assert torch.equal(static.sequences, dynamic)
    assert hasattr(model, "_compiled_call") == compiled  # fullgraph, dynamic=False: one graph or an error
    kind = "StaticWindowLayer" if compiled else "StaticSlidingWindowLayer"
    assert {type(layer).__name__ for layer in layers} == {kind}
    assert {layer.max_cache_len for layer in layers} == {kept + 1}
    assert int(static.past_key_values.get_seq_length()) == dynamic.shape[1] - 1  # every token counted
    if compiled:
        return
    assert getattr(model.config, "sliding_window", None) is None  # lent while the cache was built, then gone
    # A generation that fits in what a head reads keeps transformers' full static cache (a fresh model: generate
    # sizes a static cache for the longest call so far).
    fresh = perturb(tiny_model(alibi_max_bias=2.0, attn_implementation=None, **overrides), seed=1).eval()
    with torch.no_grad():
        short = fresh.generate(ids[:, : kept // 2], max_new_tokens=4, pad_token_id=0, **static_options)
    assert {type(layer).__name__ for layer in short.past_key_values.layers} == {"StaticLayer"}
