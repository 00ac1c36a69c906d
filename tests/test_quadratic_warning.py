"""Where ALiBi still takes a [B, H, Q, K] mask on a path the user did not choose for it, one warning says why and
what avoids it (a GPU's attention dropout, sdpa named on a GPU, a device with no fused path, a continuation padded
other than on the left); the CPU default's paths never take one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache
from transformers.testing_utils import CaptureLogger

from alibi_lm.modeling import alibi_blocked, alibi_masks
from alibi_lm.modeling.alibi_blocked import quadratic_mask_reason
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.modeling_alibi import AlibiModel
from tests.tiny import random_ids, tiny_model

SIZE = dict(num_attention_heads=8, hidden_size=64)


@pytest.fixture
def every_mask_warns(monkeypatch):
    """The size threshold at 0 bytes, and no cause warned of yet: any [B, H, Q, K] ALiBi mask shows."""
    monkeypatch.setattr(alibi_masks, "QUADRATIC_WARNING_BYTES", 0)
    monkeypatch.setattr(alibi_masks, "QUADRATIC_WARNED", set())


def warnings_while(run) -> str:
    with CaptureLogger(alibi_masks.logger) as captured:
        run()
    return captured.out


def continued(model, ids: torch.Tensor, mask: torch.Tensor | None, past: int, grad: bool = False) -> None:
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :past], attention_mask=None if mask is None else mask[:, :past], cache=cache, use_cache=True)
    with torch.set_grad_enabled(grad):
        out = model(ids[:, past:], attention_mask=mask, cache=cache, labels=ids[:, past:])
        if grad:
            out.loss.backward()


def test_no_path_of_the_cpu_default_builds_one(every_mask_warns):
    ids = random_ids(2, 600)
    padded = torch.ones_like(ids).index_fill_(1, torch.arange(40), 0)
    documents = torch.arange(600)[None].expand(2, -1) // 150
    model, dropout, windowed = (
        tiny_model(**SIZE).train(),
        tiny_model(attention_dropout=0.1, **SIZE).train(),
        tiny_model(alibi_window_cutoff=4.0, **SIZE).train(),
    )
    generating = tiny_model(**SIZE)
    generating.generation_config.pad_token_id = 0

    def every_path():
        for trained in (model, dropout, windowed):
            trained(ids, labels=ids).loss.backward()
            trained(ids, attention_mask=padded, labels=ids).loss.backward()
            trained(ids, document_ids=documents, labels=ids).loss.backward()
        continued(model, ids, None, 400, grad=True)
        continued(model, ids, padded, 400, grad=True)
        settings = dict(max_new_tokens=4, do_sample=False)
        with torch.no_grad():
            generating.generate(ids.clamp(min=1), attention_mask=padded, **settings)
            generating.generate(ids.clamp(min=1), attention_mask=padded, prefill_chunk_size=128, **settings)
            generating.generate(ids, cache_implementation="static", **settings)

    assert warnings_while(every_path) == ""
    assert alibi_masks.QUADRATIC_WARNED == set()


def test_a_continuation_padded_on_the_right_warns_once_naming_left_padding(every_mask_warns):
    model = tiny_model(**SIZE)
    ids, mask = random_ids(2, 300), torch.ones(2, 300, dtype=torch.long)
    mask[0, -20:] = 0
    out = warnings_while(lambda: [continued(model, ids, mask, 200) for _ in range(2)])
    assert out.count("[B, H, Q, K] mask") == 1
    assert "100 x 300" in out and "padding_side='left'" in out


def test_below_the_size_threshold_nothing_warns(monkeypatch):
    monkeypatch.setattr(alibi_masks, "QUADRATIC_WARNED", set())
    model = tiny_model(**SIZE)
    ids, mask = random_ids(2, 300), torch.ones(2, 300, dtype=torch.long)
    mask[0, -20:] = 0  # a [2, 8, 100, 300] fp32 mask: 1.8 MiB
    assert warnings_while(lambda: continued(model, ids, mask, 200)) == ""


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """The CPU standing in for CUDA: the fused default's device, where the blocked plan does not run."""
    monkeypatch.setattr(AlibiModel, "fused_default_devices", ("cuda", "cpu"))
    monkeypatch.setattr(alibi_blocked, "blocked_by_default", lambda device, dtype: False)


def test_attention_dropout_on_a_gpu_warns_naming_the_dropout_and_flash_attention(every_mask_warns, cpu_as_cuda):
    model = tiny_model(attn_implementation=None, attention_dropout=0.1, **SIZE).train()
    ids = random_ids(1, 300)
    out = warnings_while(lambda: model(ids, labels=ids).loss.backward())
    assert "no attention dropout (attention_dropout=0.1)" in out and "flash_attention_2" in out


def test_sdpa_named_on_a_gpu_warns_that_the_default_takes_no_mask(every_mask_warns, cpu_as_cuda):
    model = tiny_model(attn_implementation="sdpa", **SIZE)
    with torch.no_grad():
        out = warnings_while(lambda: model(random_ids(1, 300)))
    assert "attn_implementation='sdpa' takes the bias as a mask on cpu" in out


def test_eager_and_a_prepared_four_d_mask_are_chosen_and_never_warn(every_mask_warns):
    ids = random_ids(1, 300)
    custom = torch.ones(1, 1, 300, 300).tril().bool()
    with torch.no_grad():
        out = warnings_while(lambda: tiny_model(attn_implementation="eager", **SIZE)(ids))
        out += warnings_while(lambda: tiny_model(**SIZE)(ids, attention_mask=custom))
    assert out == ""


def test_a_device_with_no_fused_path_is_named():
    layout = build_layout(None, None, 1, 300, 300, 0, torch.device("cpu"))
    on_mps = dataclasses.replace(layout, device=torch.device("mps"))
    reason = quadratic_mask_reason(on_mps, "alibi_fused", ("cuda",), 0.0)
    assert reason.endswith("flex_attention on cuda and blocked sdpa on the CPU; on mps the bias is a mask")
    assert quadratic_mask_reason(on_mps, "eager", ("cuda",), 0.0) is None
