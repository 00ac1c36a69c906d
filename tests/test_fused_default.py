"""With no attn_implementation given, a GPU forward must not build the [B, H, L, L] ALiBi mask that sdpa needs.

The default is named: `alibi_fused`, registered with transformers' AttentionInterface. It runs flex_attention for
multi-token forwards on `AlibiModel.fused_default_devices` (CUDA) and sdpa otherwise. Here the CPU stands in for
CUDA: the tests add it to that tuple, so the same code path runs and is checked on this machine. An
attn_implementation the user names is the one that runs; the bias-free generic kernels are refused.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from alibi_lm import AlibiForCausalLM
from alibi_lm.modeling.alibi_layout import build_layout
from alibi_lm.modeling.alibi_masks import ALIBI_FUSED, FlexAlibiMask
from alibi_lm.modeling.modeling_alibi import AlibiModel
from tests.tiny import random_ids, tiny_config, tiny_model


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    monkeypatch.setattr(AlibiModel, "fused_default_devices", ("cuda", "cpu"))


def mask_for(model: AlibiForCausalLM, query_length: int, key_length: int | None = None):
    key_length = key_length or query_length
    layout = build_layout(None, None, 1, query_length, key_length, key_length - query_length, torch.device("cpu"))
    return model.model.build_attention_mask(layout, torch.float32)


def test_the_default_is_named_and_a_chosen_implementation_is_the_one_the_config_names(tmp_path):
    model = AlibiForCausalLM(tiny_config())
    assert model.config._attn_implementation == ALIBI_FUSED
    assert ALIBI_FUSED in ALL_ATTENTION_FUNCTIONS.valid_keys()  # a name transformers itself accepts
    model.save_pretrained(tmp_path)
    assert ALIBI_FUSED not in (tmp_path / "config.json").read_text()  # runtime state, not saved
    assert AlibiForCausalLM.from_pretrained(tmp_path).config._attn_implementation == ALIBI_FUSED
    for explicit in (
        AlibiForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa"),
        AlibiForCausalLM._from_config(tiny_config(), attn_implementation="sdpa"),
    ):
        assert explicit.config._attn_implementation == "sdpa"
    model.set_attn_implementation(ALIBI_FUSED)  # back to the default by its name
    assert model.config._attn_implementation == ALIBI_FUSED


@pytest.mark.parametrize("name", ["flash_attention_3", "flash_attention_4", "paged|eager"])
def test_generic_kernels_that_drop_the_bias_are_refused(name, tmp_path):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*adds no ALiBi bias.*'flex_attention'"):
        AlibiForCausalLM.from_pretrained(tmp_path, attn_implementation=name)
    model = tiny_model()
    with pytest.raises(ValueError, match="adds no ALiBi bias"):
        model.set_attn_implementation(name)
    assert model.config._attn_implementation == "sdpa"  # unchanged


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


def test_a_named_sdpa_runs_sdpa_on_a_fused_device(cpu_as_gpu):
    explicit = tiny_model(attn_implementation="sdpa")  # _from_config(..., attn_implementation="sdpa")
    mask = mask_for(explicit, 64)
    assert not isinstance(mask, FlexAlibiMask)


def test_the_default_runs_sdpa_on_the_cpu():
    model = AlibiForCausalLM(tiny_config()).eval()
    assert not isinstance(mask_for(model, 64), FlexAlibiMask)  # the key-only fast path, no compile


@pytest.mark.parametrize("switch", ["TORCHDYNAMO_DISABLE", "TORCH_COMPILE_DISABLE"])
def test_with_torch_compile_switched_off_the_default_falls_back_to_sdpa_and_says_so(cpu_as_gpu, monkeypatch, switch):
    """flex_attention uncompiled materializes L x L scores (and our call refuses to run so): with compiling off for
    the process, the default takes sdpa on a fused device, exact, with one warning naming the variable."""
    from transformers.testing_utils import CaptureLogger

    from alibi_lm.modeling import alibi_masks

    if switch == "TORCHDYNAMO_DISABLE":
        monkeypatch.setenv(switch, "1")
    # torch's own patch, not monkeypatch: on torch 2.14+ monkeypatch's undo deletes the config entry, and every later
    # compile in the process then fails ("torch._dynamo.config.disable does not exist").
    switched_off = torch._dynamo.config.patch(disable=True) if switch == "TORCH_COMPILE_DISABLE" else nullcontext()
    with switched_off:
        alibi_masks.logger.warning_once.cache_clear()
        model = AlibiForCausalLM(tiny_config()).eval()
        with CaptureLogger(alibi_masks.logger) as captured:
            assert not isinstance(mask_for(model, 64), FlexAlibiMask)
            ids = random_ids(2, 96)
            with torch.no_grad():
                fused = model(ids).logits
        assert (
            captured.out.count("falls back to sdpa") == 1
            and "TORCHDYNAMO_DISABLE or TORCH_COMPILE_DISABLE" in captured.out
        )
        model.set_attn_implementation("eager")
        with torch.no_grad():
            torch.testing.assert_close(fused, model(ids).logits, atol=1e-5, rtol=0)
