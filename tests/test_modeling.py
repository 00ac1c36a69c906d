"""The core model: slopes, the mask that carries them, every backend, padding, cache, Hub folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import alibi_lm
from alibi_lm.modeling import alibi_masks
from alibi_lm.modeling.alibi_blocked import PATTERN_CACHE_BYTES, WindowedAlibi
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import alibi_windows, build_dense_mask, decoding_mask, get_alibi_slopes
from tests.tiny import random_ids, tiny_config, tiny_model

BACKENDS = ["eager", "sdpa", "flex_attention"]


def logits(model, ids, mask=None, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits


# --- slopes -----------------------------------------------------------------------------------


def paper_slopes(n: int) -> list[float]:
    """The official fairseq code's get_slopes, transcribed."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("num_heads", range(1, 65))
def test_slopes_match_the_paper_formula(num_heads):
    torch.testing.assert_close(get_alibi_slopes(num_heads), torch.tensor(paper_slopes(num_heads)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_heads", [8, 12, 16, 20, 40])
def test_slopes_match_transformers_bloom(num_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    # Bloom's bias at key position 1 (mask of two ones) is exactly its slope.
    alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)  # [H, 1, 2]
    torch.testing.assert_close(get_alibi_slopes(num_heads), alibi[:, 0, 1], rtol=1e-6, atol=0)


def test_slopes_are_fp32_after_a_bf16_cast():
    model = tiny_model().to(torch.bfloat16)
    slopes = model.model.position_encoding.slopes(torch.device("cpu"))
    assert slopes.dtype == torch.float32
    torch.testing.assert_close(slopes, get_alibi_slopes(4))


# --- the mask ---------------------------------------------------------------------------------


def test_one_layer_attention_equals_a_direct_computation():
    model = tiny_model(num_hidden_layers=1, attn_implementation="sdpa")
    attn = model.model.layers[0].self_attn
    captured = {}
    attn.register_forward_hook(lambda mod, args, kwargs, out: captured.update(x=args[0], out=out[0]), with_kwargs=True)
    ids = random_ids(2, 12)
    logits(model, ids)

    x = captured["x"]  # [B, L, hidden]
    batch, length, _ = x.shape
    heads, head_dim = 4, 8
    q = attn.q_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    m = torch.tensor(paper_slopes(heads))[:, None, None]
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) - m * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    expected = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1))
    torch.testing.assert_close(captured["out"], expected, atol=1e-5, rtol=0)


CPU = torch.device("cpu")


def alibi_bias(num_heads: int):
    slopes = get_alibi_slopes(num_heads)
    return lambda head, distance: -slopes[head] * distance


def test_mask_values_are_the_relative_bias_and_dtype_minimum():
    layout = build_layout(None, None, 1, 5, 5, 0, CPU)
    mask = build_dense_mask(layout, alibi_bias(4), 4, torch.float32)
    assert mask.shape == (1, 4, 5, 5)
    assert mask[0, 0, 4, 1].item() == pytest.approx(-0.25 * 3)  # 4 heads: m_0 = 2**-2
    assert mask[0, 3, 2, 2].item() == 0.0
    assert mask[0, 1, 1, 3].item() == torch.finfo(torch.float32).min


def test_left_padded_positions_skip_the_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    layout = build_layout(mask, None, 1, 5, 5, 0, CPU)
    assert layout.key_positions.tolist() == [[0, 0, 0, 1, 2]]
    assert layout.key_valid.tolist() == [[False, False, True, True, True]]


def test_bf16_bias_is_accurate_at_32k():
    length = 32768
    slopes = get_alibi_slopes(8)
    layout = build_layout(None, None, 1, 1, length, length - 1, CPU)
    mask = build_dense_mask(layout, alibi_bias(8), 8, torch.bfloat16)  # [1, H, 1, K]
    distance = (length - 1 - torch.arange(length, dtype=torch.float64))[None, :]
    exact = -slopes.double()[:, None] * distance  # [H, K]
    got = mask[0, :, 0].double()
    nonzero = exact != 0
    relative = ((got - exact).abs()[nonzero] / exact.abs()[nonzero]).max().item()
    assert relative <= 2e-2
    assert got[:, -1].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize(
    "past, queries, keys", [(0, 1, 1), (299, 1, 300), (299, 1, 512), (4999, 1, 5000), (0, 300, 300), (200, 300, 700)]
)
def test_the_decoding_mask_is_the_general_rule(past, queries, keys, windowed, dtype):
    """The shortcut for queries after a cache (decoding steps, a continued prompt) gives what the general rule gives:
    later queries and slots past the last query (a static cache's empty tail) hidden, keys past a head's window
    hidden, the rest the bias (past as an int and as a static cache's 0-d tensor)."""
    slopes = get_alibi_slopes(8)
    windows = alibi_windows(slopes, 20.0) if windowed else None
    for past_length in (past, torch.tensor(past)):
        layout = build_layout(None, None, 1, queries, keys, past_length, CPU)
        want = build_dense_mask(layout, alibi_bias(8), 8, dtype, windows)
        got = decoding_mask(layout, slopes, windows, dtype)
        assert got.shape == want.shape == (1, 8, queries, keys) and got.dtype == dtype
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("windowed", [False, True])
def test_decoding_steps_slice_one_kept_row_that_holds_the_decoding_masks_values(windowed, dtype):
    # A decoding step's mask depends on the key's distance alone: each step slices a row per head kept across steps
    # (rebuilt twice as long when outgrown) instead of computing it, and gives the same values.
    model = tiny_model(num_attention_heads=4, alibi_window_cutoff=2.0 if windowed else None)
    slopes = get_alibi_slopes(4)
    windows = alibi_windows(slopes, 2.0) if windowed else None
    rows = set()
    for keys in (1, 40, 41, 1024, 1025, 3000):
        layout = build_layout(None, None, 1, 1, keys, keys - 1, CPU)
        mask = model.model.build_attention_mask(layout, dtype)
        assert torch.equal(mask, decoding_mask(layout, slopes, windows, dtype)) and mask.dtype == dtype
        rows.add(mask.untyped_storage().data_ptr())
    assert len(rows) == 3  # 1,024 columns, then 2,048 (for 1,025 keys), then 4,096 (for 3,000)
    cached = build_layout(None, None, 1, 1, 4096, 99, CPU)  # a static cache's slots: computed, its tail hidden
    assert torch.equal(model.model.build_attention_mask(cached, dtype), decoding_mask(cached, slopes, windows, dtype))
    # A row past a quarter of the patterns' budget would be cleared and rebuilt every step: computed instead.
    keys = PATTERN_CACHE_BYTES // 4 // (4 * torch.finfo(dtype).bits // 8) + 1
    long = build_layout(None, None, 1, 1, keys, keys - 1, CPU)
    mask = model.model.build_attention_mask(long, dtype)
    assert torch.equal(mask, decoding_mask(long, slopes, windows, dtype)) and mask.is_contiguous()


def test_a_decoding_step_takes_the_shortcut_and_matches_eager():
    model = tiny_model(num_attention_heads=4)
    layout = build_layout(None, None, 1, 1, 40, 39, CPU)
    mask = model.model.build_attention_mask(layout, torch.float32)
    assert torch.equal(mask, decoding_mask(layout, get_alibi_slopes(4), None, torch.float32))
    ids = random_ids(1, 40)
    eager = tiny_model(num_attention_heads=4, attn_implementation="eager")
    with torch.no_grad():
        cache = model(ids[:, :39], use_cache=True).cache
        step = model(ids[:, 39:], cache=cache, use_cache=True).logits[0, -1]
        full = eager(ids).logits[0, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_sdpa_builds_the_mask_once_per_forward(monkeypatch):
    calls = []
    original = alibi_masks.build_dense_mask

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(alibi_masks, "build_dense_mask", counting)
    model = tiny_model(num_hidden_layers=4, attn_implementation="sdpa")
    seen = []
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(
            lambda mod, args, kwargs, out: seen.append(id(kwargs["attention_mask"])), with_kwargs=True
        )
    ids, padding = random_ids(2, 9), torch.tensor([[1] * 9, [1] * 2 + [0] * 2 + [1] * 5])
    with torch.no_grad():
        cache = model(ids[:, :6], attention_mask=padding[:, :6], use_cache=True).cache  # compacted: no dense mask
        seen.clear()
        model(ids[:, 6:], attention_mask=padding, cache=cache, use_cache=True)  # a hole, then a cache: the 4-D mask
    assert len(calls) == 1
    assert len(seen) == 4 and len(set(seen)) == 1


# --- backends ---------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_backends_agree(padded, kv_heads):
    ids = random_ids(3, 11)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :4] = 0
        mask[2, :1] = 0
    results = {}
    for backend in BACKENDS:
        model = tiny_model(attn_implementation=backend, num_key_value_heads=kv_heads)
        results[backend] = logits(model, ids, mask)
    keep = mask.bool()
    for backend in ("sdpa", "flex_attention"):
        torch.testing.assert_close(results[backend][keep], results["eager"][keep], atol=1e-5, rtol=0)


def test_cpu_fast_path_is_used_and_exact():
    model = tiny_model(attn_implementation="sdpa")
    mask = model.model.build_attention_mask(build_layout(None, None, 1, 64, 64, 0, CPU), torch.float32)
    # At 64 tokens every head sees the whole sequence within the underflow cutoff: one fused key-only call.
    assert isinstance(mask, WindowedAlibi) and min(mask.windows) >= 63
    ids = random_ids(2, 64)
    torch.testing.assert_close(
        logits(model, ids), logits(tiny_model(attn_implementation="eager"), ids), atol=1e-5, rtol=0
    )


def test_cpu_fast_path_is_not_used_where_it_would_be_wrong():
    model = tiny_model(attn_implementation="sdpa")
    hole = torch.tensor([[1, 0, 1, 1, 1]])
    for (mask, docs, q_len, k_len, past), dtype in [
        ((hole, None, 2, 5, 3), torch.float32),  # a hole, two tokens after a cache (left padding would run blocked)
        ((None, None, 4, 4, 0), torch.float64),  # fp64: the key-only bias and the kernel's scores are fp32
        ((None, None, 1, 5, 4), torch.float32),  # decoding: Q != K
    ]:
        with torch.no_grad():  # as generation runs (continued prompts run blocked only without gradients)
            built = model.model.build_attention_mask(build_layout(mask, docs, 1, q_len, k_len, past, CPU), dtype)
        assert isinstance(built, torch.Tensor) and built.dim() == 4


def test_cpu_fast_path_runs_a_padded_batch_with_its_tokens_gathered_ahead_of_its_padding():
    model = tiny_model(attn_implementation="sdpa")
    padding = torch.tensor([[0, 1, 1, 1, 0], [1, 0, 1, 1, 1]])  # left and right padding; a hole
    built = model.model.build_attention_mask(build_layout(padding, None, 2, 5, 5, 0, CPU), torch.float32)
    assert isinstance(built, WindowedAlibi)
    assert built.compaction.order.tolist() == [[1, 2, 3, 0, 4], [0, 2, 3, 4, 1]]
    assert built.compaction.restore.tolist() == [[3, 0, 1, 2, 4], [0, 4, 1, 2, 3]]
    # Packed documents too: gathered the same way, each padding slot then a document of its own.
    documents = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    built = model.model.build_attention_mask(build_layout(padding, documents, 2, 5, 5, 0, CPU), torch.float32)
    assert built.documents.starts.tolist() == [[0, 0, 2, 3, 4], [0, 1, 1, 1, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padding_matches_the_unpadded_row(backend):
    model = tiny_model(attn_implementation=backend, num_key_value_heads=2)
    ids = random_ids(3, 10)
    pads = [0, 3, 7]
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    batched = logits(model, ids, mask)
    assert not batched.isnan().any()
    for row, pad in enumerate(pads):
        alone = logits(model, ids[row : row + 1, pad:])
        torch.testing.assert_close(batched[row, pad:], alone[0], atol=1e-5, rtol=0)


def test_left_padding_gives_no_nan_in_bf16():
    model = tiny_model(attn_implementation="sdpa").to(torch.bfloat16)
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    assert not logits(model, ids, mask).isnan().any()


def test_packed_documents_attend_only_inside_their_document():
    model = tiny_model(attn_implementation="sdpa")
    ids = random_ids(1, 12)
    documents = torch.tensor([[0] * 5 + [1] * 7])
    packed = logits(model, ids, document_ids=documents)
    torch.testing.assert_close(packed[0, :5], logits(model, ids[:, :5])[0], atol=1e-5, rtol=0)
    # ALiBi is translation-invariant: the second document needs no position reset.
    torch.testing.assert_close(packed[0, 5:], logits(model, ids[:, 5:])[0], atol=1e-5, rtol=0)
    flex = logits(tiny_model(attn_implementation="flex_attention"), ids, document_ids=documents)
    torch.testing.assert_close(flex, packed, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_a_document_id_that_comes_back_starts_a_new_document(backend):
    # Positions restart at every change of id, so a returning id is a new document on every backend (flash-attn's
    # varlen sequences are runs too); eager attention used to let it see its namesake's earlier tokens.
    model = tiny_model(attn_implementation=backend)
    ids = random_ids(1, 12)
    returning = logits(model, ids, document_ids=torch.tensor([[0] * 4 + [1] * 4 + [0] * 4]))
    torch.testing.assert_close(returning[0, 8:], logits(model, ids[:, 8:])[0], atol=1e-5, rtol=0)


# --- cache and generation ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_decoding_equals_a_full_forward(backend):
    model = tiny_model(attn_implementation=backend, num_key_value_heads=2)
    ids = random_ids(2, 14)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    full = logits(model, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
        steps = [out.logits]
        cache = out.cache
        for t in range(8, 14):
            out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    keep = mask.bool()
    torch.testing.assert_close(incremental[keep], full[keep], atol=1e-5, rtol=0)


def test_greedy_generation_far_past_the_training_length_equals_no_cache():
    model = tiny_model()
    prompt = random_ids(1, 4)
    length = 8 * model.config.train_length + 4  # 132 tokens, trained at 16
    with torch.no_grad():
        cached = model.generate(prompt, max_length=length, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_length=length, do_sample=False, use_cache=False)
    assert cached.shape[1] == length
    assert torch.equal(cached, uncached)


def test_batched_left_padded_generation_equals_single_rows():
    model = tiny_model()
    a, b = random_ids(1, 6, seed=1), random_ids(1, 3, seed=2)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
        alone_b = model.generate(b, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[1, 3:], alone_b[0])


# --- the paper's baselines --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["sinusoidal", "rotary", "t5", "none"])
def test_baselines_work_with_cache_padding_and_every_backend(encoding):
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    keep = mask.bool()
    reference = None
    for backend in BACKENDS:
        model = tiny_model(attn_implementation=backend, position_encoding=encoding)
        full = logits(model, ids, mask)
        if reference is None:
            reference = full
        torch.testing.assert_close(full[keep], reference[keep], atol=1e-5, rtol=0)
    model = tiny_model(attn_implementation="sdpa", position_encoding=encoding)
    alone = logits(model, ids[1:, 3:])
    torch.testing.assert_close(full[1, 3:], alone[0], atol=1e-5, rtol=0)
    with torch.no_grad():
        out = model(input_ids=ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        step = model(input_ids=ids[:, 7:], attention_mask=mask, cache=out.cache, use_cache=True)
    torch.testing.assert_close(step.logits[keep[:, 7:]], reference[:, 7:][keep[:, 7:]], atol=1e-5, rtol=0)
    generated = model.generate(ids[:1, :4], max_new_tokens=40, do_sample=False)
    assert generated.shape == (1, 44)


def test_position_encodings_differ():
    ids = random_ids(1, 10)
    outs = [logits(tiny_model(position_encoding=e), ids) for e in ["alibi", "sinusoidal", "rotary", "t5", "none"]]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j], atol=1e-4)


# --- Hub folder -------------------------------------------------------------------------------


def test_auto_classes_are_registered():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("alibi", hidden_size=32, num_attention_heads=4), alibi_lm.AlibiConfig)
    assert type(AutoModel.from_config(config)).__name__ == "AlibiModel"
    assert type(AutoModelForCausalLM.from_config(config)).__name__ == "AlibiForCausalLM"


def test_save_writes_a_hub_folder_and_loads_without_remote_code(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_alibi.py", "modeling_alibi.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_alibi.AlibiConfig",
        "AutoModel": "modeling_alibi.AlibiModel",
        "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
        "AutoModelForSequenceClassification": "modeling_alibi.AlibiForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_alibi.AlibiForTokenClassification",
        "AutoModelForQuestionAnswering": "modeling_alibi.AlibiForQuestionAnswering",
    }
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__module__ == "alibi_lm.modeling.modeling_alibi"
    ids = random_ids(2, 9)
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base).__name__ == "AlibiModel"


def test_fresh_process_loads_through_remote_code(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    ids = random_ids(1, 6)
    torch.save({"ids": ids, "logits": logits(model, ids)}, tmp_path / "ref.pt")
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=40, do_sample=False)
    torch.save(generated, tmp_path / "gen.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["alibi_lm"] = None  # make sure the installed package cannot be used
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        with torch.no_grad():
            assert torch.equal(model(ref["ids"]).logits, ref["logits"])
            gen = model.generate(ref["ids"], max_new_tokens=40, do_sample=False)
        assert torch.equal(gen, torch.load({str(tmp_path / "gen.pt")!r}))
        bf16 = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True,
                                                    torch_dtype=torch.bfloat16)
        assert bf16.dtype == torch.bfloat16
        with torch.no_grad():
            out = bf16(ref["ids"]).logits.float()
        assert (out - ref["logits"]).abs().max() < 0.05
        print("REMOTE-OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK" in result.stdout


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(position_encoding="learned"), "position_encoding"),
        (dict(hidden_act="gelu_fancy"), "hidden_act"),
        (dict(attention_dropout=1.5), "attention_dropout"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(train_length=0), "train_length"),
        (dict(train_length=16.0), "train_length"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize("bad", [99, 150, -1])
def test_out_of_vocabulary_ids_raise_a_value_error(bad):
    model = tiny_model()
    ids = random_ids(1, 5)
    ids[0, 2] = bad
    with pytest.raises(ValueError, match="vocab_size=99"):
        logits(model, ids)


def test_attention_mask_of_the_wrong_shape_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="attention_mask"):
        logits(model, random_ids(2, 5), torch.ones(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        logits(model, random_ids(2, 5), torch.ones(1, 5, dtype=torch.long))


def test_unknown_attn_implementation_raises():
    with pytest.raises(ValueError, match="not_a_kernel"):
        alibi_lm.AlibiForCausalLM._from_config(tiny_config(), attn_implementation="not_a_kernel")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flash_attention_2_matches_sdpa_with_padding():
    pytest.importorskip("flash_attn")
    ids = random_ids(2, 64).cuda()
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    flash = tiny_model(attn_implementation="flash_attention_2").cuda().to(torch.bfloat16)
    sdpa = tiny_model(attn_implementation="sdpa").cuda().to(torch.bfloat16)
    keep = mask.bool()
    torch.testing.assert_close(logits(flash, ids, mask)[keep], logits(sdpa, ids, mask)[keep], atol=2e-2, rtol=0)


def test_cpu_training_leaves_denormals_alone():
    # The model once flushed denormals to zero for speed and never restored it: a process-wide change.
    model = tiny_model().train()
    ids = random_ids(1, 16)
    model(ids, labels=ids).loss.backward()
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


def test_sinusoidal_adds_the_sinusoid_after_the_embedding_norm():
    # The demo's baselines use BLOOM's embedding LayerNorm: the sinusoid must not be normalised away.
    model = tiny_model(position_encoding="sinusoidal", embedding_layer_norm=True)
    captured = {}
    model.model.layers[0].register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    ids = random_ids(1, 6)
    logits(model, ids)
    embeds = model.model.embed_tokens(ids) * math.sqrt(32)
    angles = torch.arange(6.0)[:, None] / 10000.0 ** (torch.arange(0, 32, 2) / 32)
    expected = model.model.embed_layer_norm(embeds) + torch.cat([angles.sin(), angles.cos()], -1)
    torch.testing.assert_close(captured["x"], expected, atol=1e-5, rtol=0)
