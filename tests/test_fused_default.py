"""With no attn_implementation given, a GPU forward must not build the [B, H, L, L] ALiBi mask that sdpa needs.

The model then runs flex_attention for multi-token forwards on `AlibiModel.fused_default_devices` (CUDA). Here the
CPU stands in for CUDA: the tests add it to that tuple, so the same code path runs and is checked on this machine.
An attn_implementation the user names is always obeyed.
"""

from __future__ import annotations

import pytest
import torch

from alibi_lm import AlibiForCausalLM
from alibi_lm.modeling.modeling_alibi import AlibiModel, FlexAlibiMask, build_layout
from tests.tiny import random_ids, tiny_config, tiny_model


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    monkeypatch.setattr(AlibiModel, "fused_default_devices", ("cuda", "cpu"))


def mask_for(model: AlibiForCausalLM, query_length: int, key_length: int | None = None):
    key_length = key_length or query_length
    layout = build_layout(None, None, 1, query_length, key_length, key_length - query_length, torch.device("cpu"))
    return model.model.build_attention_mask(layout, torch.float32)


def test_the_default_is_remembered_and_an_explicit_choice_clears_it(tmp_path):
    model = AlibiForCausalLM(tiny_config())
    assert model.config._attn_implementation == "sdpa" and model.config._alibi_default_attention
    model.save_pretrained(tmp_path)
    assert "_alibi_default_attention" not in (tmp_path / "config.json").read_text()  # runtime state, not saved
    assert AlibiForCausalLM.from_pretrained(tmp_path).config._alibi_default_attention
    for explicit in (
        AlibiForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa"),
        AlibiForCausalLM._from_config(tiny_config(), attn_implementation="sdpa"),
    ):
        assert explicit.config._attn_implementation == "sdpa" and not explicit.config._alibi_default_attention
    model.set_attn_implementation("sdpa")  # the same name, now chosen
    assert not model.config._alibi_default_attention


def test_default_backend_on_a_fused_device_takes_flex_for_prefill_and_the_small_mask_for_decoding(cpu_as_gpu):
    model = AlibiForCausalLM(tiny_config()).eval()
    assert isinstance(mask_for(model, 64), FlexAlibiMask)  # prefill: no L x L tensor
    decode = mask_for(model, 1, 65)
    assert isinstance(decode, torch.Tensor) and decode.shape == (1, 4, 1, 65)  # one decoding step: [1, H, 1, K]
    ids = random_ids(2, 96)
    with torch.no_grad():
        fused = model(ids).logits
        model.set_attn_implementation("eager")
        torch.testing.assert_close(fused, model(ids).logits, atol=1e-5, rtol=0)


def test_an_explicit_sdpa_is_obeyed_on_a_fused_device(cpu_as_gpu):
    explicit = tiny_model(attn_implementation="sdpa")  # _from_config(..., attn_implementation="sdpa")
    mask = mask_for(explicit, 64)
    assert not isinstance(mask, FlexAlibiMask)


def test_the_cpu_keeps_sdpa_by_default():
    model = AlibiForCausalLM(tiny_config()).eval()
    assert not isinstance(mask_for(model, 64), FlexAlibiMask)  # the key-only fast path, no compile
