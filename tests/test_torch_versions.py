"""The torch releases the model runs on: every one transformers 5 takes (2.6 and newer), not only the one CI pins.

A Hub user runs the remote code on whatever torch they have. Until 2026-12-08 the model did not import on torch 2.6
(its ops' schemas were inferred from `list[float]` annotations, which 2.6 cannot read), flex_attention on the CPU
failed inside inductor before 2.9, and on 2.9 and 2.10 a compiled chunked prefill took an L x L mask per chunk
(those releases say "exporting" inside torch.compile). Here: the ops need no inference, the flex refusal names the
release, export is told from compile by its flag, and (slow) venvs with torch 2.6.0 and 2.10.0 from the package
registry run the saved model's remote code as this torch does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers.testing_utils import CaptureLogger

from alibi_lm import AlibiForCausalLM
from alibi_lm.modeling import alibi_compile, alibi_masks
from alibi_lm.modeling.configuration_alibi import release
from alibi_lm.modeling.modeling_alibi import AlibiModel
from tests.tiny import random_ids, saved_folder, tiny_model

OLDEST_TORCH = "2.6.0"  # transformers 5's floor (`is_torch_available`), and setup.cfg's


def test_the_release_is_read_from_every_form_of_torch_version():
    assert release("2.13.0+cpu") == (2, 13)
    assert release("2.10.0a0+git1234abc") == (2, 10)
    assert release("2.6.0") == (2, 6) < alibi_compile.FLEX_CPU_TORCH


def test_the_ops_register_without_torchs_schema_inference(tmp_path):
    """torch 2.6 infers no schema from `list[float]` (the model failed to import there); every op states its own."""
    script = (
        "import torch\n"
        "infer = torch.library.infer_schema\n"
        "def refuse(function, *args, **kwargs):\n"
        "    if function.__module__.startswith('alibi_lm'):  # torch's own ops infer theirs\n"
        "        raise AssertionError(f'the schema of {function.__name__} was inferred from its annotations')\n"
        "    return infer(function, *args, **kwargs)\n"
        "torch.library.infer_schema = refuse\n"
        "from alibi_lm.modeling import alibi_attention, alibi_triton\n"
        "query, key, value = torch.randn(3, 1, 4, 9, 8).unbind(0)\n"
        "plan = ([0.5, 0.25, 0.125, 0.0625], [9, 9, 9, 2], [False, False, False, False], 0.35)\n"
        "fused = alibi_attention.dynamic_blocked_attention(query, key, value, None, *plan)\n"
        "eager = alibi_attention.uncompiled_blocked_attention(query, key, value, None, *plan, 0.0)\n"
        "torch.testing.assert_close(fused, eager.transpose(1, 2), atol=1e-6, rtol=0)\n"
        "print(alibi_triton.flash_forward._opoverload._schema.arguments[-2].name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["past_length"]


@pytest.mark.parametrize("found, runs", [((2, 8), False), ((2, 9), True)])
def test_flex_on_the_cpu_before_2_9_is_refused_by_name(monkeypatch, found, runs):
    if runs and alibi_compile.TORCH_RELEASE < alibi_compile.FLEX_CPU_TORCH:
        pytest.skip(f"torch {torch.__version__} cannot run flex_attention on the CPU")
    monkeypatch.setattr(alibi_compile, "TORCH_RELEASE", found)
    model = tiny_model(attn_implementation="flex_attention")
    ids, mask = random_ids(2, 20), torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0
    if runs:
        with torch.no_grad():
            flex = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        with torch.no_grad():
            eager = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(flex[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=0)
        return
    with pytest.raises(RuntimeError, match=r"flex_attention on the CPU needs torch>=2\.9, but torch .* installed"):
        model(ids, attention_mask=mask)


def test_the_default_on_a_fused_device_falls_back_to_sdpa_on_such_a_torch(monkeypatch):
    """With the CPU standing in for a fused device: sdpa, exact, and one warning that names torch's release."""
    monkeypatch.setattr(alibi_compile, "TORCH_RELEASE", (2, 8))
    monkeypatch.setattr(AlibiModel, "fused_default_devices", ("cuda", "cpu"))
    alibi_masks.logger.warning_once.cache_clear()
    model = tiny_model(attn_implementation=alibi_masks.ALIBI_FUSED)
    ids = random_ids(2, 96)
    with CaptureLogger(alibi_masks.logger) as captured, torch.no_grad():
        fused = model(ids).logits
    assert captured.out.count("falls back to sdpa") == 1
    assert f"torch {torch.__version__} cannot compile it on the CPU" in captured.out
    model.set_attn_implementation("eager")
    with torch.no_grad():
        torch.testing.assert_close(fused, model(ids).logits, atol=1e-5, rtol=0)


def test_export_is_told_apart_from_compile_by_exports_own_flag():
    """torch 2.9 and 2.10 answer True to `torch.compiler.is_exporting()` inside torch.compile (pytorch#176347): a
    compiled chunked prefill took the `[B, H, Q, K]` mask for every chunk there. The model reads export's flag. (This
    torch answers right either way; the slow check below runs the same on 2.10.)"""
    from alibi_lm.modeling.alibi_blocked import is_exporting

    if not hasattr(torch.compiler, "_is_exporting_flag"):
        pytest.skip(f"torch {torch.__version__} keeps no export flag (2.6): export is not told apart there")

    class Branch(torch.nn.Module):
        def forward(self, x):
            return x + 1 if is_exporting() else x - 1

    x = torch.zeros(1)
    assert Branch()(x).item() == -1
    assert torch.compile(Branch(), fullgraph=True)(x).item() == -1
    assert torch.export.export(Branch(), (x,)).module()(x).item() == 1


# Run by another torch, on the saved folder's remote code (transformers alone loads it): its logits, greedy tokens
# past the training length, a gradient, what flex_attention on the CPU does, and, where torch.compile takes
# transformers' forward whole (2.9 and newer), a compiled chunked prefill into a static cache: its tokens and how
# many chunks took a [B, H, Q, K] mask.
OTHER_TORCH_SCRIPT = """
import importlib, json, sys, torch
from transformers import AutoModelForCausalLM
assert torch.__version__.startswith(sys.argv[2]), torch.__version__
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__  # the remote code
masks = importlib.import_module(type(model).__module__.rsplit(".", 1)[0] + ".alibi_masks")
ids = torch.tensor(json.loads(sys.argv[3]))
mask = torch.ones_like(ids)
mask[0, :7] = 0
with torch.no_grad():
    logits = model(ids, attention_mask=mask).logits
tokens = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0)
model.train()
model(ids, attention_mask=mask, labels=ids).loss.backward()
gradient = model.model.layers[0].self_attn.q_proj.weight.grad
model.eval()
model.set_attn_implementation("flex_attention")
try:
    with torch.no_grad():
        flex = model(ids, attention_mask=mask).logits[mask.bool()].tolist()
except RuntimeError as error:
    flex = str(error)
model.set_attn_implementation("sdpa")
chunked, dense = None, []
if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 9):
    original = masks.build_dense_mask
    masks.build_dense_mask = lambda layout, *a, **k: (
        (layout.query_length > 1 and dense.append(layout.query_length)) or original(layout, *a, **k)
    )
    model.forward = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        chunked = model.generate(
            ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, prefill_chunk_size=8,
            cache_implementation="static",
        ).tolist()
print(json.dumps({"logits": logits[mask.bool()].tolist(), "tokens": tokens.tolist(), "gradient": gradient.tolist(),
                  "flex": flex, "chunked": chunked, "dense": dense}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [OLDEST_TORCH, "2.10.0"])
def test_another_torch_runs_the_remote_code_as_this_one(tmp_path, version):
    """torch 2.6.0 (transformers 5's floor) and 2.10.0, CUDA builds of about 3 GB from the package registry, each in
    a venv over this interpreter's packages: the saved model's remote code gives this torch's logits, greedy tokens
    and gradients. On 2.6 flex_attention on the CPU is refused with the message that names 2.9; on 2.10 it runs, and
    a compiled chunked prefill takes no [B, H, Q, K] mask (it took one per chunk while the model asked
    `torch.compiler.is_exporting()`)."""
    folder = saved_folder(tiny_model(seed=3, max_position_embeddings=256), tmp_path / "model")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"torch=={version}"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"could not install torch {version} from the package registry: {done.stderr[-500:]}")
    ids = random_ids(2, 30, seed=4)
    done = subprocess.run(
        [python, "-c", OTHER_TORCH_SCRIPT, str(folder), version, json.dumps(ids.tolist())], capture_output=True,
        text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    other = json.loads(done.stdout.strip().splitlines()[-1])
    here = AlibiForCausalLM.from_pretrained(folder).eval()
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    with torch.no_grad():
        logits = here(ids, attention_mask=mask).logits[mask.bool()]
    torch.testing.assert_close(torch.tensor(other["logits"]), logits, atol=1e-5, rtol=0)
    tokens = here.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert other["tokens"] == tokens.tolist() and tokens.shape[1] == 70 > here.config.train_length
    here.train()
    here(ids, attention_mask=mask, labels=ids).loss.backward()
    gradient = here.model.layers[0].self_attn.q_proj.weight.grad
    torch.testing.assert_close(torch.tensor(other["gradient"]), gradient, atol=1e-6, rtol=1e-4)
    if version == OLDEST_TORCH:
        assert other["flex"].startswith(f"flex_attention on the CPU needs torch>=2.9, but torch {version}")
        return
    torch.testing.assert_close(torch.tensor(other["flex"]), logits, atol=1e-5, rtol=0)
    assert other["chunked"] == tokens[:, :35].tolist() and other["dense"] == []
