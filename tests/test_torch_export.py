"""`torch.export` with a dynamic length (the road to ONNX, ExecuTorch, AOTInductor) and transformers' ExecuTorch
wrapper: the exported program computes what the model does, at every length and layout.

A length given as `Dim("length", max=...)` failed until 2026-12-07: with "unhashable type: non-nested SymInt" (the CPU
default took the traced plan, since a bounded length looked static, and keyed its patterns by a symbol), with a
violated constraint for packed documents (slices of L - 1 tokens made export guard on L != 2) and for windowed
models (the choice between their windows and the dense shortcut guarded on the length).
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny import random_ids, tiny_model

SIZE = dict(num_attention_heads=8, hidden_size=64)


def layout_inputs(layout: str, batch: int, length: int) -> dict[str, torch.Tensor]:
    if layout == "padded":
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, : length // 3] = 0
        return {"attention_mask": mask}
    if layout == "packed":
        return {"document_ids": (torch.arange(length) // 200)[None].expand(batch, -1).contiguous()}
    if layout == "restarting positions":  # transformers' padding-free packing
        positions = torch.cat([torch.arange(length // 3), torch.arange(length - length // 3)])
        return {"position_ids": positions[None].expand(batch, -1).contiguous()}
    return {}


@pytest.mark.parametrize(
    "cutoff, layout",
    [
        (None, "plain"),
        (None, "padded"),
        (None, "packed"),
        (None, "restarting positions"),
        (4.0, "plain"),
        (4.0, "padded"),
        (20.0, "packed"),
    ],  # fmt: skip
)
def test_a_dynamic_length_export_computes_the_models_logits_at_every_length(cutoff, layout):
    # 8 heads: at 40 tokens every head sees the whole sequence; at 1,500 the steep ones run in blocks (and a window
    # cutoff of 4 gives every head a window shorter than the sequence).
    model = tiny_model(attn_implementation=None, alibi_window_cutoff=cutoff, **SIZE)
    example = layout_inputs(layout, 2, 300)
    batch, length = torch.export.Dim("batch", max=8), torch.export.Dim("length", max=4096)  # as export's docs write
    dynamic = {name: {0: batch, 1: length} for name in ("input_ids", *example)}
    inputs = {"input_ids": random_ids(2, 300), **example, "use_cache": False}
    exported = torch.export.export(
        model, (), inputs, dynamic_shapes={**dynamic, "use_cache": None}, strict=False
    ).module()
    for batch, length in ((2, 40), (1, 300), (3, 1500)):
        ids, extra = random_ids(batch, length, seed=length), layout_inputs(layout, batch, length)
        with torch.no_grad():
            expected = model(ids, use_cache=False, **extra).logits
            logits = exported(input_ids=ids, **extra, use_cache=False).logits
        valid = extra.get("attention_mask", torch.ones(batch, length)).bool()
        torch.testing.assert_close(logits[valid], expected[valid], atol=1e-5, rtol=0)


# transformers' own: dynamo names its output-capturing global as a side effect of every model's export (Llama's too,
# checked with transformers 5.25 and torch 2.13).
@pytest.mark.filterwarnings("ignore:While compiling, we found certain side effects:UserWarning")
def test_the_executorch_wrapper_exports_a_static_cache_decoder_that_generates_the_models_tokens():
    from transformers.integrations.executorch import (
        TorchExportableModuleForDecoderOnlyLM,
        TorchExportableModuleWithStaticCache,
    )

    model = tiny_model(attn_implementation=None, **SIZE)
    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": 512}
    program = TorchExportableModuleForDecoderOnlyLM(model).export(
        input_ids=torch.tensor([[1]]), cache_position=torch.tensor([0])
    )
    prompt = random_ids(1, 200)
    tokens = TorchExportableModuleWithStaticCache.generate(
        exported_program=program, prompt_token_ids=prompt, max_new_tokens=12
    )
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=12, do_sample=False, cache_implementation="dynamic")
    assert tokens.tolist() == expected.tolist()


def test_an_exported_continuation_after_a_static_cache_holds_only_aten_ops():
    # Compiled, a multi-token forward after a static cache's tokens runs the plan in this package's own op
    # (`StaticContinuation`); an exported program keeps aten's ops there instead, which runtimes such as ExecuTorch
    # have kernels for (with that op in it, the program ran only where alibi_lm is imported).
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    model = tiny_model(attn_implementation=None, **SIZE)
    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": 512}
    wrapper = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=512)
    with torch.no_grad():
        program = torch.export.export(
            wrapper, (), {"input_ids": random_ids(1, 8), "cache_position": torch.arange(16, 24)}, strict=False
        )
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert targets and not [target for target in targets if "alibi" in target]
