# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""How alibi-lm's flex_attention calls get compiled, and where they cannot be.

flex_attention and `create_block_mask` are fast only compiled: uncompiled they materialize every score, L x L. This
file holds the rule for when torch.compile can build them (`flex_compiles`), a compiled copy per call signature
(`compiled`, so no caller spends another's recompile budget), and the errors and warning where they would run
uncompiled. It travels with checkpoints as Hub remote code beside `alibi_masks.py` and imports only torch (and
`configuration_alibi`'s version parser).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import types
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from .configuration_alibi import release


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def compile_disabled() -> bool:
    """Whether torch.compile is switched off for the process, returning functions unchanged: TORCHDYNAMO_DISABLE=1
    (read by each `torch.compile` call) or TORCH_COMPILE_DISABLE=1 (`torch._dynamo.config.disable`)."""
    return os.environ.get("TORCHDYNAMO_DISABLE", "") == "1" or bool(torch._dynamo.config.disable)


TORCH_RELEASE = release(torch.__version__)
# Before this release inductor cannot compile flex_attention on the CPU where its mask_mod or score_mod reads a
# tensor, as ours do for padded or packed batches and after a cache: it fails with "All the buffers in the score and
# mask subgraph should be in kernel_group.args.input_buffers" (seen on torch 2.6.0, 2.7.1 and 2.8.0).
FLEX_CPU_TORCH = (2, 9)
OLD_TORCH_FLEX = (
    "flex_attention on the CPU needs torch>={need}, but torch {found} is installed: its inductor fails to compile a "
    "mask or score_mod that reads a tensor, as ALiBi's do for padded and packed batches. Use the default attention "
    "(alibi_fused, which runs no flex_attention on the CPU) or attn_implementation='sdpa', or upgrade: "
    "pip install -U 'torch>={need}'"
)


def flex_too_old(device: torch.device) -> str | None:
    """`OLD_TORCH_FLEX` filled in where this torch cannot compile flex_attention on `device`, else None."""
    if device.type != "cpu" or TORCH_RELEASE >= FLEX_CPU_TORCH:
        return None
    return OLD_TORCH_FLEX.format(need=".".join(map(str, FLEX_CPU_TORCH)), found=torch.__version__)


def flex_compiles(device: torch.device) -> bool:
    """Whether torch.compile can build flex_attention on `device`: inductor's CPU backend (from torch
    `FLEX_CPU_TORCH`), or Triton on a GPU, and compiling not switched off."""
    return (device.type == "cpu" or _has_triton()) and not compile_disabled() and flex_too_old(device) is None


FUSED_UNCOMPILED = (
    "alibi-lm's default attention (alibi_fused) runs flex_attention on {device}, which needs torch.compile, and "
    "torch.compile is unavailable here ({why}): it falls back to sdpa with a [B, H, L, L] bias, L x L memory per "
    "head. Unset the variable (or install Triton) for the fused kernel; attn_implementation='alibi_triton' needs no "
    "torch.compile."
)


UNCOMPILED_FLEX = (
    "{what} ran uncompiled: torch.compile did not compile alibi-lm's call (dynamo disabled, e.g. by "
    "TORCHDYNAMO_DISABLE or torch.compiler.disable, or a compile that failed), and torch's unfused implementation "
    "materializes every score, L x L. flex_attention needs torch.compile; use attn_implementation='sdpa' where it "
    "is unavailable."
)


def block_mask_call(
    mask_mod: Callable, batch: int | None, heads: int | None, query_length: int, key_length: int, device: torch.device
) -> BlockMask:
    """create_block_mask, run only compiled (`compiled`): uncompiled it evaluates `mask_mod` on all Q x K pairs."""
    if not torch.compiler.is_compiling():
        raise RuntimeError(UNCOMPILED_FLEX.format(what="create_block_mask"))
    return create_block_mask(mask_mod, batch, heads, query_length, key_length, device=device)


def compiled(function: Callable, signature: tuple) -> Callable:
    """`torch.compile(function)` for one call signature (device, dtypes, shapes), with a cache of its own.

    dynamo keeps compiled graphs per code object and gives up on one after 8 (`recompile_limit`), then runs it
    uncompiled for the rest of the process, for every caller: torch's own `flex_attention` is shared with every
    other flex user, and 8 length buckets, a second dtype or a windowed model used to exhaust it, after which flex
    silently materialized L x L scores (26 GiB at 16k tokens on a GPU). Each signature gets a copy of the code
    object, so each is one graph against a budget of 8 that nothing else spends; shapes are bucketed
    (`flex_bucket`), so signatures stay few. Static shapes: dynamic ones hit an inductor C++ codegen error on the
    CPU (torch 2.13: `cur_qSplitSize1 was not declared`, GQA with padding).
    """
    if torch.compiler.is_compiling():
        # Traced from an outer torch.compile (a compiled model): dynamo inlines the call whatever wraps it, and from
        # torch 2.14 warns that it ignores a functools cache on the way, so the cache is left out of the trace.
        return compile_copy(function, signature)
    return cached_compile_copy(function, signature)


def compile_copy(function: Callable, signature: tuple) -> Callable:
    code = function.__code__.replace(co_name=f"{function.__name__}_{len(signature)}_{abs(hash(signature))}")
    return torch.compile(types.FunctionType(code, function.__globals__, code.co_name), dynamic=False)


cached_compile_copy = functools.cache(compile_copy)
