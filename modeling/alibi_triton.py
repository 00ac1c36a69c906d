# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""Flash attention with the ALiBi bias added in registers (`attn_implementation="alibi_triton"`): the host side.

What flash-attn 2's `alibi_slopes` does inside its CUDA kernel, written in Triton so it runs wherever torch's GPU build
does (no extra wheel). The kernels are in `alibi_triton_kernels.py`; here are the mask form they read
(`TritonAlibiMask`: slopes, windows and `[B, K]` layout tensors, nothing Q x K), the launches, and the two custom ops
(forward, backward) that make the kernel one node of a `torch.compile` graph: no graph break around attention.

On the CPU it runs only in Triton's interpreter (`TRITON_INTERPRET=1`): slow, for testing the kernel.
"""

import functools
import math
import re
from dataclasses import dataclass

import torch

from .alibi_triton_kernels import COMPILE_OPTIONS, INTERPRETER_BLOCK, interpreting, kernels, triton

LOG2E = math.log2(math.e)  # the kernels work in base 2: exp2 is one instruction

TRITON_MISSING = (
    "attn_implementation='alibi_triton' needs Triton (`pip install triton`; torch's CUDA wheels carry it)."
)
TRITON_ON_CPU = (
    "attn_implementation='alibi_triton' runs on CUDA devices; on the CPU only in Triton's interpreter (start Python "
    "with TRITON_INTERPRET=1: Triton reads it when imported; slow, meant for testing the kernel)."
)
# Inputs whose scores take the bias as one vector per tile (`_alibi_scores`, plain layouts): 16-bit ones, whose
# probabilities are rounded to 8 or 11 bits before the second matmul anyway. fp32 keeps the per-score distance, exact
# to the last bit the reference has.
ROW_SHIFT_DTYPES = (torch.float16, torch.bfloat16)
# The largest window the kernel takes (int32 arithmetic on slot + window must not overflow).
TRITON_WINDOW_LIMIT = 2**30


def check_device(device: torch.device) -> None:
    """A clear error where the kernel cannot run: no Triton, or a CPU tensor outside the interpreter."""
    if triton is None:
        raise ImportError(TRITON_MISSING)
    if device.type == "cpu" and not interpreting():
        raise ValueError(TRITON_ON_CPU)


@dataclass
class TritonAlibiMask:
    """The `alibi_triton` mask: the slopes, windows and layout tensors the kernels read per tile.

    Nothing is Q x K: the kernels compute each tile's bias and visibility from these. Layout tensors are `[B, K]`
    int32 (`key_valid` int8), all with the same strides; None where the layout is plain.
    `document_start`/`document_end`: the first and one-past-last slot of each slot's document, for skipping tiles.
    """

    log2_slopes: torch.Tensor  # [H] fp32, the slopes times log2(e) (the kernels' base); zeros without a bias
    windows: torch.Tensor | None  # [H] int32
    past_length: int
    key_positions: torch.Tensor | None = None
    key_valid: torch.Tensor | None = None
    document_ids: torch.Tensor | None = None
    document_start: torch.Tensor | None = None
    document_end: torch.Tensor | None = None


def document_bounds(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, K]` first slot and one past the last slot of each slot's document id in its row (ids need not be runs).

    A stable sort groups each row's slots by id, in slot order: a group's first and last entries are its bounds.
    Every shape is static, so a compiled forward skips tiles by document as an eager one does.
    """
    length = document_ids.shape[1]
    ids, order = torch.sort(document_ids, dim=1, stable=True)
    index = torch.arange(length, device=ids.device).expand_as(ids)
    opens = torch.ones_like(ids, dtype=torch.bool)
    opens[:, 1:] = ids[:, 1:] != ids[:, :-1]
    closes = opens.roll(-1, dims=1)
    closes[:, -1] = True
    group_first = torch.where(opens, index, 0).cummax(dim=1).values
    group_last = torch.where(closes, index, length).flip(1).cummin(dim=1).values.flip(1)
    start = torch.empty_like(order).scatter_(1, order, order.gather(1, group_first))
    end = torch.empty_like(order).scatter_(1, order, order.gather(1, group_last) + 1)
    return start, end


def build_triton_mask(
    slopes: torch.Tensor | None,
    windows: torch.Tensor | None,
    num_heads: int,
    device: torch.device,
    past_length: int | torch.Tensor,
    key_positions: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> TritonAlibiMask:
    """The `TritonAlibiMask` of a layout's tensors (`alibi_masks.triton_alibi_mask` passes them), made once per forward
    for every layer: `slopes` None for a position encoding without a bias (all zero); no `key_positions` for a plain
    layout (one unpadded document per row, position = slot)."""
    if slopes is None:
        slopes = torch.zeros(num_heads, device=device)
    if windows is not None:
        windows = windows.clamp(max=TRITON_WINDOW_LIMIT).to(device=device, dtype=torch.int32)
    log2_slopes = slopes.to(device=device, dtype=torch.float32).mul(LOG2E).contiguous()
    mask = TritonAlibiMask(log2_slopes, windows, int(past_length))
    if key_positions is None:
        return mask

    def slots(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(device=device, dtype=dtype).contiguous()

    mask.key_positions = slots(key_positions, torch.int32)
    mask.key_valid = slots(key_valid, torch.int8)
    if document_ids is not None:
        mask.document_ids = slots(document_ids, torch.int32)
        start, end = document_bounds(document_ids)
        mask.document_start, mask.document_end = slots(start, torch.int32), slots(end, torch.int32)
    return mask


def _length_bucket(length: int) -> int:
    """The power of two at or above `length`: lengths in one bucket share an autotuned configuration."""
    return 1 << max(0, length - 1).bit_length()


@functools.cache
def _placeholder(device: torch.device) -> torch.Tensor:
    """What a pointer argument gets for a layout tensor the layout lacks (never read: its flag is off)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _launch_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    log2_slopes: torch.Tensor,
    layout: tuple[torch.Tensor | None, ...],
    bounds: tuple[torch.Tensor | None, torch.Tensor | None],
    past_length: int,
    scale: float,
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor], dict]:
    """The kernels' shared arguments: the pointers `[slopes, windows, positions, valid, documents]` and the document
    bounds `(start, end)` (a placeholder for each tensor the layout lacks), and the sizes, flags and strides."""
    windows, positions, valid, documents = layout
    batch, heads, query_length, head_dim = query.shape
    key_heads, key_length = key.shape[1:3]
    if heads % key_heads:
        raise ValueError(f"{heads} query heads cannot share {key_heads} key/value heads evenly.")
    placeholder = _placeholder(query.device)
    plain = positions is None
    stride_lb, stride_ls = (0, 0) if plain else positions.stride()
    pointers = [log2_slopes, *(tensor if tensor is not None else placeholder for tensor in layout)]
    start, end = (bound if bound is not None else placeholder for bound in bounds)
    common = dict(
        H=heads, GROUPS=heads // key_heads, QLEN=query_length, KLEN=key_length, PAST=past_length,
        qk_scale=scale * LOG2E,
        LEN_BUCKET=_length_bucket(key_length), HEAD_DIM=head_dim, BLOCK_D=max(16, _length_bucket(head_dim)),
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        PLAIN=plain, HAS_VALID=valid is not None, HAS_DOCS=documents is not None, HAS_WINDOW=windows is not None,
        ROW_SHIFT=plain and query.dtype in ROW_SHIFT_DTYPES, DOCUMENT_SKIP=bounds[0] is not None,
        # Slot distance is position distance unless padding sits between a query and its keys.
        WINDOW_SKIP=windows is not None and valid is None,
        stride_lb=stride_lb, stride_ls=stride_ls, **COMPILE_OPTIONS,
    )  # fmt: skip
    if interpreting():
        common.update(BLOCK_M=INTERPRETER_BLOCK, BLOCK_N=INTERPRETER_BLOCK)  # the interpreter runs one config
    return pointers, (start, end), common


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [stride for tensor in tensors for stride in tensor.stride()]


# The two ops' names carry this module's import name: a process may hold several copies of this file (the package's
# and each Hub repo's remote code, which may be an older version), and a second definition under one name replaces
# the first for every caller.
_OP = "alibi_lm::" + re.sub(r"\W", "_", __name__)
Tensor = torch.Tensor
OptionalTensor = torch.Tensor | None  # `Tensor?` in the ops' schemas
# The ops' schemas are written out, as alibi_attention's are: torch before 2.7 infers none from some annotations.
_LAYOUT = (
    "Tensor log2_slopes, Tensor? windows, Tensor? positions, Tensor? valid, Tensor? documents, "
    "Tensor? document_start, Tensor? document_end, SymInt past_length, float scale"
)


@torch.library.custom_op(
    f"{_OP}_forward",
    mutates_args=(),
    schema=f"(Tensor query, Tensor key, Tensor value, {_LAYOUT}) -> (Tensor, Tensor)",
)
def flash_forward(
    query: Tensor, key: Tensor, value: Tensor, log2_slopes: Tensor, windows: OptionalTensor,
    positions: OptionalTensor, valid: OptionalTensor, documents: OptionalTensor, document_start: OptionalTensor,
    document_end: OptionalTensor, past_length: int, scale: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Attention output `[B, H, Q, D]` (the query's dtype and strides) and log-sum-exp `[B, H, Q]` (fp32, base 2).

    `document_end` is the backward's (dK/dV skip tiles past a document's end); an input here so autograd keeps it.
    """
    check_device(query.device)
    batch, heads, query_length = query.shape[:3]
    pointers, (start, _), common = _launch_arguments(
        query, key, log2_slopes, (windows, positions, valid, documents), (document_start, document_end),
        past_length, scale,
    )  # fmt: skip
    out = torch.empty_like(query)
    lse = torch.empty(batch, heads, query_length, dtype=torch.float32, device=query.device)
    grid = lambda meta: (triton.cdiv(query_length, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    kernels(interpreting()).forward[grid](
        query, key, value, out, lse, *pointers, start, *_strides(query, key, value, out), **common
    )
    return out, lse


@flash_forward.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, *layout_and_sizes) -> tuple[Tensor, Tensor]:
    return torch.empty_like(query), query.new_empty(query.shape[:3], dtype=torch.float32)


@torch.library.custom_op(
    f"{_OP}_backward",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, "
    f"{_LAYOUT}) -> (Tensor, Tensor, Tensor)",
)
def flash_backward(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor, log2_slopes: Tensor,
    windows: OptionalTensor, positions: OptionalTensor, valid: OptionalTensor, documents: OptionalTensor,
    document_start: OptionalTensor, document_end: OptionalTensor, past_length: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dQ (laid out as Q), dK and dV (contiguous `[B, H_kv, K, D]`) for the output gradient `grad_out`."""
    batch, heads, query_length, head_dim = query.shape
    key_heads, key_length = key.shape[1:3]
    pointers, (start, end), common = _launch_arguments(
        query, key, log2_slopes, (windows, positions, valid, documents), (document_start, document_end),
        past_length, scale,
    )  # fmt: skip
    grad_out = grad_out.contiguous()
    delta = (out.float() * grad_out.float()).sum(-1)  # [B, H, Q]: rowsum(dO * O), the softmax's backward term
    dq = torch.empty_like(query)
    # One dK/dV slice per query head; a group of query heads sharing a KV head sums its slices below.
    dk = torch.empty(batch, heads, key_length, head_dim, dtype=key.dtype, device=key.device)
    dv = torch.empty_like(dk)
    found = kernels(interpreting())
    # dO shares Q's shape but not necessarily its strides; dK and dV share theirs (`stride_g*`).
    gradient_strides = dict(zip(("stride_gb", "stride_gh", "stride_gn", "stride_gd"), dk.stride()))
    found.dkdv[lambda meta: (triton.cdiv(key_length, meta["BLOCK_N"]), batch * heads)](
        query, key, value, grad_out, lse, delta, dk, dv, *pointers, end,
        *_strides(query, key, value, grad_out), **gradient_strides, **common, sm_scale=scale,
    )  # fmt: skip
    found.dq[lambda meta: (triton.cdiv(query_length, meta["BLOCK_M"]), batch * heads)](
        query, key, value, grad_out, lse, delta, dq, *pointers, start,
        *_strides(query, key, value, grad_out), **common, sm_scale=scale,
    )  # fmt: skip
    if key_heads != heads:
        dk = dk.view(batch, key_heads, heads // key_heads, key_length, head_dim).sum(2)
        dv = dv.view(batch, key_heads, heads // key_heads, key_length, head_dim).sum(2)
    return dq, dk, dv


@flash_backward.register_fake
def _(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, *rest) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(query), key.new_empty(key.shape), value.new_empty(value.shape)


def _save_for_backward(ctx, inputs: tuple, output: tuple) -> None:
    *tensors, past_length, scale = inputs  # query, key, value, then the layout
    ctx.save_for_backward(*tensors, *output)
    ctx.past_length, ctx.scale = past_length, scale


def _gradients(ctx, grad_out: Tensor, grad_lse: Tensor) -> tuple[Tensor | None, ...]:
    *tensors, out, lse = ctx.saved_tensors
    query, key, value, *layout = tensors
    dq, dk, dv = flash_backward(grad_out, query, key, value, out, lse, *layout, ctx.past_length, ctx.scale)
    return dq, dk, dv, *(None,) * (len(layout) + 2)


flash_forward.register_autograd(_gradients, setup_context=_save_for_backward)


def alibi_flash_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: TritonAlibiMask, scale: float
) -> torch.Tensor:
    """ALiBi attention with no bias tensor (see `alibi_triton_kernels`), differentiable in query, key and value.

    Under `torch.compile` the kernels are two opaque nodes of the graph (custom ops), with no graph break around them.

    Args:
        query: `[B, H, Q, D]`, any strides.
        key, value: `[B, H_kv, K, D]`, H a multiple of H_kv; K >= `mask.past_length` + Q (the cache, then the queries).
        mask: the layout, slopes and windows (`build_triton_mask`).
        scale: the score scale, `D ** -0.5` for the model.

    Returns:
        `[B, H, Q, D]` in the query's dtype.
    """
    out, _ = flash_forward(
        query, key, value, mask.log2_slopes, mask.windows, mask.key_positions, mask.key_valid, mask.document_ids,
        mask.document_start, mask.document_end, mask.past_length, scale,
    )  # fmt: skip
    return out
