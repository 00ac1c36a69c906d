# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The Triton kernels of `alibi_triton`: flash attention with the ALiBi bias added per tile, forward and backward.

Device code only (the launches, the autograd and the mask form are in `alibi_triton.py`). Each tile of scores gets
`-m_h * (pos_q - pos_k)` from the slope and the two positions, so no bias tensor exists. Tiles above the causal
diagonal, before the query block's document start and past a head's window are never visited. Padding, packed
documents and windows are the layout's rule (`alibi_layout.AttentionLayout.visible_within`) evaluated per tile.

The kernels follow the FlashAttention-2 algorithm (Dao, 2023) and the layout of Triton's fused-attention tutorial
(`python/tutorials/06-fused-attention.py`): online softmax in base 2, the log-sum-exp saved for a backward that
computes dK/dV per key block and dQ per query block. ALiBi: Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022.
Kernel arguments are untyped and upper case where Triton's convention has them so (pointers, compile-time constants).
No `from __future__ import annotations` here: Triton reads `tl.constexpr` from the live annotations.
"""

import functools
import importlib
import types

try:  # Hub remote code must import without Triton: only the `alibi_triton` backend needs it.
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    constexpr = int  # what the annotations below name when Triton is absent; nothing is compiled then
else:
    constexpr = tl.constexpr


def interpreting() -> bool:
    """Whether Triton was imported in its interpreter mode (`TRITON_INTERPRET=1` before the import, Triton's switch:
    its own library functions are built then, and cannot change mode later)."""
    return triton is not None and type(tl.sum).__name__ == "InterpretedFunction"


def _alibi_scores(
    q, k, offs_m, offs_n, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query,
    POS, VALID, DOCS, stride_ls, PAST, KLEN,
    MASKED: constexpr, PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr, HAS_WINDOW: constexpr,
    ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """One `[BLOCK_M, BLOCK_N]` tile of base-2 scores with the bias added and, if `MASKED`, hidden pairs at -inf.

    `key_rows` points at this batch row of the `[B, K]` layout tensors; `q_pos`, `q_doc` are the queries' positions
    and documents (loaded once per query block by the caller). Unmasked tiles are those every query sees whole.

    With `ROW_SHIFT` (plain layouts, 16-bit inputs) the bias is `m * (pos_k - first_query)`, a vector per tile: one
    multiply-add per score instead of four operations. It differs from `-m * (pos_q - pos_k)` by
    `m * (pos_q - first_query)` per row (`_row_shift`, at most m * BLOCK_M), which leaves the softmax unchanged;
    callers take it out of the log-sum-exp they store and put it back into the one they load.
    """
    key_in = offs_n < KLEN
    if PLAIN:
        k_pos = offs_n
    else:
        k_pos = tl.load(POS + key_rows + offs_n * stride_ls, mask=key_in, other=0)
    if ROW_SHIFT:
        key_bias = slope * (k_pos - first_query).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale + key_bias[None, :]
    else:
        distance = q_pos[:, None] - k_pos[None, :]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - slope * distance.to(tl.float32)
    if MASKED:
        q_slot = offs_m + PAST
        visible = (offs_n[None, :] <= q_slot[:, None]) & key_in[None, :]
        if HAS_VALID:
            valid = tl.load(VALID + key_rows + offs_n * stride_ls, mask=key_in, other=0)
            visible = visible & (valid != 0)[None, :]
        if HAS_DOCS:
            k_doc = tl.load(DOCS + key_rows + offs_n * stride_ls, mask=key_in, other=-2)
            visible = visible & (k_doc[None, :] == q_doc[:, None])
        if HAS_WINDOW:
            visible = visible & ((q_pos[:, None] - k_pos[None, :]) <= window)
        visible = visible | (offs_n[None, :] == q_slot[:, None])  # a query always sees its own slot
        s = tl.where(visible, s, float("-inf"))
    return s


def _row_shift(slope, offs_m, first_row, ROW_SHIFT: constexpr):
    """What `ROW_SHIFT` scores add to each row: `m * (pos_q - first_query)` for queries `offs_m` from `first_row`."""
    shift = (offs_m - first_row).to(tl.float32)
    if ROW_SHIFT:
        shift = shift * slope
    else:
        shift = tl.zeros_like(shift)
    return shift  # one return: Triton's compiler wants one type from every branch


def _query_layout(POS, DOCS, key_rows, offs_m, stride_ls, PAST, QLEN, PLAIN: constexpr, HAS_DOCS: constexpr):
    """The positions and documents of a block of queries (slots `PAST + offs_m`)."""
    q_slot = offs_m + PAST
    q_in = offs_m < QLEN
    if PLAIN:
        q_pos = q_slot
    else:
        q_pos = tl.load(POS + key_rows + q_slot * stride_ls, mask=q_in, other=0)
    q_doc = q_pos  # unused without documents
    if HAS_DOCS:
        q_doc = tl.load(DOCS + key_rows + q_slot * stride_ls, mask=q_in, other=-1)
    return q_pos, q_doc


def _key_range(DSTART, key_rows, first_slot, window, stride_ls, KLEN, BLOCK_M: constexpr, BLOCK_N: constexpr,
               PLAIN: constexpr, HAS_WINDOW: constexpr, DOCUMENT_SKIP: constexpr, WINDOW_SKIP: constexpr):  # fmt: skip
    """The key blocks a query block starting at slot `first_slot` visits, `lo <= whole_start <= whole_stop <= hi`.

    Not before its document's start or its window; nothing after its last query (causal). `[whole_start, whole_stop)`
    are the blocks every query of the block sees whole (at or before its first query, inside its last query's
    window): plain layouts only, run without mask arithmetic; the blocks on either side are masked.
    """
    lo = 0
    if DOCUMENT_SKIP:  # the earliest document start among the block's queries (ids may return after a gap)
        slots = first_slot + tl.arange(0, BLOCK_M)
        lo = tl.min(tl.load(DSTART + key_rows + slots * stride_ls, mask=slots < KLEN, other=KLEN), 0)
    if WINDOW_SKIP:
        lo = tl.maximum(lo, first_slot - window)
    lo = lo // BLOCK_N * BLOCK_N
    hi = tl.minimum(KLEN, first_slot + BLOCK_M)
    whole_start = lo
    whole_stop = lo
    if PLAIN:
        whole_stop = tl.maximum(lo, tl.minimum(hi, (first_slot + 1) // BLOCK_N * BLOCK_N))
        if HAS_WINDOW:  # from the first key inside every query's window
            reach = tl.maximum(first_slot + BLOCK_M - 1 - window, 0)
            whole_start = tl.minimum(whole_stop, tl.maximum(lo, tl.cdiv(reach, BLOCK_N) * BLOCK_N))
    return lo, whole_start, whole_stop, hi


def _head_constants(SLOPES, WINDOWS, h, HAS_WINDOW: constexpr):
    """Head h's slope (base 2) and window (0 without windows)."""
    window = 0
    if HAS_WINDOW:
        window = tl.load(WINDOWS + h)
    return tl.load(SLOPES + h), window


def _part(lo, whole_start, whole_stop, hi, PART: constexpr):
    """`[start, stop)` of part 0, 1 or 2 of a loop split as `[lo, whole_start)`, `[whole_start, whole_stop)`,
    `[whole_stop, hi)`."""
    start, stop = whole_stop, hi
    if PART == 0:
        start, stop = lo, whole_start
    if PART == 1:
        start, stop = whole_start, whole_stop
    return start, stop  # one return: Triton's compiler wants one type from every branch


def _key_tile(k_base, v_base, stride_kn, stride_vn, offs_n, KLEN, d_in):
    """The keys and values of slots `offs_n`, zeros past KLEN."""
    kv_mask = (offs_n < KLEN)[:, None] & d_in[None, :]
    k = tl.load(k_base + offs_n[:, None] * stride_kn, mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn, mask=kv_mask, other=0.0)
    return k, v


def _forward_tiles(
    acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, lo, hi, d_in,
    offs_m, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS, stride_ls, PAST, KLEN,
    BLOCK_N: constexpr, MASKED: constexpr, PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr,
    HAS_WINDOW: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """The online softmax over key blocks `[lo, hi)`: running max `m_i`, sum `l_i` and output `acc`, base 2."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _key_tile(k_base, v_base, stride_kn, stride_vn, offs_n, KLEN, d_in)
        s = _alibi_scores(
            q, k, offs_m, offs_n, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS,
            stride_ls, PAST, KLEN, MASKED, PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


def _forward(
    Q, K, V, OUT, LSE, SLOPES, WINDOWS, POS, VALID, DOCS, DSTART,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_ls,
    H, GROUPS, QLEN, KLEN, PAST, qk_scale, LEN_BUCKET,
    HEAD_DIM: constexpr, BLOCK_D: constexpr, BLOCK_M: constexpr, BLOCK_N: constexpr,
    PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr, HAS_WINDOW: constexpr, DOCUMENT_SKIP: constexpr,
    WINDOW_SKIP: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """One block of queries for one (batch row, head): the output and the log-sum-exp (base 2) of its scores."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_in, d_in = offs_m < QLEN, offs_d < HEAD_DIM
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=q_in[:, None] & d_in[None, :], other=0.0,
    )  # fmt: skip
    slope, window = _head_constants(SLOPES, WINDOWS, h, HAS_WINDOW)
    key_rows = b * stride_lb
    q_pos, q_doc = _query_layout(POS, DOCS, key_rows, offs_m, stride_ls, PAST, QLEN, PLAIN, HAS_DOCS)
    first_query = PAST + start_m * BLOCK_M
    lo, whole_start, whole_stop, hi = _key_range(
        DSTART, key_rows, first_query, window, stride_ls, KLEN, BLOCK_M, BLOCK_N,
        PLAIN, HAS_WINDOW, DOCUMENT_SKIP, WINDOW_SKIP,
    )  # fmt: skip

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * stride_kb + (h // GROUPS) * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b * stride_vb + (h // GROUPS) * stride_vh + offs_d[None, :] * stride_vd
    for part in tl.static_range(3):  # a window's edge (masked), the whole blocks, the diagonal (masked)
        start, stop = _part(lo, whole_start, whole_stop, hi, part)
        acc, l_i, m_i = _forward_tiles(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, start, stop, d_in, offs_m, q_pos, q_doc,
            key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS, stride_ls, PAST, KLEN,
            BLOCK_N, part != 1, PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past QLEN, which are not stored
    out = acc / l_safe[:, None]
    tl.store(
        OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        out.to(OUT.dtype.element_ty), mask=q_in[:, None] & d_in[None, :],
    )  # fmt: skip
    lse = m_i + tl.log2(l_safe) - _row_shift(slope, offs_m, start_m * BLOCK_M, ROW_SHIFT)  # the true LSE
    tl.store(LSE + bh * QLEN + offs_m, lse, mask=q_in)


def _dkdv_tiles(
    dk, dv, k, v, q_base, do_base, stride_qm, stride_om, LSE, DELTA, bh, lo, hi, d_in,
    offs_n, key_rows, slope, window, qk_scale, POS, VALID, DOCS, stride_ls, PAST, QLEN, KLEN,
    BLOCK_M: constexpr, MASKED: constexpr, PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr,
    HAS_WINDOW: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """dK and dV of one key block, summed over query blocks `[lo, hi)` (dK still to be scaled by `sm_scale`)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_in = offs_m < QLEN
        q_mask = q_in[:, None] & d_in[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm, mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_om, mask=q_mask, other=0.0)
        lse = tl.load(LSE + bh * QLEN + offs_m, mask=q_in, other=float("inf"))  # rows past QLEN: p = 0
        lse += _row_shift(slope, offs_m, start_m, ROW_SHIFT)
        delta = tl.load(DELTA + bh * QLEN + offs_m, mask=q_in, other=0.0)
        q_pos, q_doc = _query_layout(POS, DOCS, key_rows, offs_m, stride_ls, PAST, QLEN, PLAIN, HAS_DOCS)
        first_query = PAST + start_m
        s = _alibi_scores(
            q, k, offs_m, offs_n, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS,
            stride_ls, PAST, KLEN, MASKED, PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip
        p = tl.exp2(s - lse[:, None])
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    return dk, dv


def _backward_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, SLOPES, WINDOWS, POS, VALID, DOCS, DEND,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_ls,
    stride_gb, stride_gh, stride_gn, stride_gd,
    H, GROUPS, QLEN, KLEN, PAST, qk_scale, sm_scale, LEN_BUCKET,
    HEAD_DIM: constexpr, BLOCK_D: constexpr, BLOCK_M: constexpr, BLOCK_N: constexpr,
    PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr, HAS_WINDOW: constexpr, DOCUMENT_SKIP: constexpr,
    WINDOW_SKIP: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """dK and dV of one block of keys for one (batch row, query head): a loop over the query blocks that see it.

    `DO` is laid out as Q (strides `stride_o*`); `DK`, `DV` are `[B, H, K, D]` (strides `stride_g*`), one slice per
    query head: with grouped KV heads the caller sums each group's slices.
    """
    start_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    kv_mask = (offs_n < KLEN)[:, None] & d_in[None, :]
    k = tl.load(
        K + b * stride_kb + (h // GROUPS) * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=kv_mask, other=0.0,
    )  # fmt: skip
    v = tl.load(
        V + b * stride_vb + (h // GROUPS) * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=kv_mask, other=0.0,
    )  # fmt: skip
    slope, window = _head_constants(SLOPES, WINDOWS, h, HAS_WINDOW)
    key_rows = b * stride_lb
    first_key = start_n * BLOCK_N
    last_key = tl.minimum(first_key + BLOCK_N, KLEN) - 1
    lo = tl.maximum(first_key - PAST, 0) // BLOCK_M * BLOCK_M  # causal: no query before the block's first key
    hi = QLEN
    if DOCUMENT_SKIP:  # nor after the last of its keys' documents ends
        ends = tl.load(DEND + key_rows + offs_n * stride_ls, mask=offs_n < KLEN, other=0)
        hi = tl.minimum(hi, tl.max(ends, 0) - PAST)
    if WINDOW_SKIP:  # nor past the head's window
        hi = tl.minimum(hi, last_key + window + 1 - PAST)
    # Query blocks in [whole_start, whole_stop) see the whole key block (plain layouts): after its last key, and
    # (with a window) ending within the window of its first key. No mask arithmetic there.
    whole_start = hi
    whole_stop = hi
    if PLAIN:
        whole_start = tl.maximum(lo, tl.minimum(hi, tl.cdiv(first_key + BLOCK_N - 1 - PAST, BLOCK_M) * BLOCK_M))
        if HAS_WINDOW:
            reach = tl.maximum(first_key + window + 1 - PAST, 0)
            whole_stop = tl.maximum(whole_start, tl.minimum(hi, reach // BLOCK_M * BLOCK_M))

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh + offs_d[None, :] * stride_qd
    do_base = DO + b * stride_ob + h * stride_oh + offs_d[None, :] * stride_od
    for part in tl.static_range(3):  # the diagonal (masked), the whole blocks, a window's edge (masked)
        start, stop = _part(lo, whole_start, whole_stop, hi, part)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, q_base, do_base, stride_qm, stride_om, LSE, DELTA, bh, start, stop, d_in, offs_n,
            key_rows, slope, window, qk_scale, POS, VALID, DOCS, stride_ls, PAST, QLEN, KLEN, BLOCK_M, part != 1,
            PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip

    tl.store(
        DK + b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd,
        (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask,
    )  # fmt: skip
    tl.store(
        DV + b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd,
        dv.to(DV.dtype.element_ty), mask=kv_mask,
    )  # fmt: skip


def _dq_tiles(
    dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, lo, hi, d_in,
    offs_m, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS, stride_ls, PAST, KLEN,
    BLOCK_N: constexpr, MASKED: constexpr, PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr,
    HAS_WINDOW: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """dQ of one query block, summed over key blocks `[lo, hi)` (still to be scaled by `sm_scale`)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _key_tile(k_base, v_base, stride_kn, stride_vn, offs_n, KLEN, d_in)
        s = _alibi_scores(
            q, k, offs_m, offs_n, q_pos, q_doc, key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS,
            stride_ls, PAST, KLEN, MASKED, PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


def _backward_dq(
    Q, K, V, DO, LSE, DELTA, DQ, SLOPES, WINDOWS, POS, VALID, DOCS, DSTART,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_ls,
    H, GROUPS, QLEN, KLEN, PAST, qk_scale, sm_scale, LEN_BUCKET,
    HEAD_DIM: constexpr, BLOCK_D: constexpr, BLOCK_M: constexpr, BLOCK_N: constexpr,
    PLAIN: constexpr, HAS_VALID: constexpr, HAS_DOCS: constexpr, HAS_WINDOW: constexpr, DOCUMENT_SKIP: constexpr,
    WINDOW_SKIP: constexpr, ROW_SHIFT: constexpr, PRECISION: constexpr,
):  # fmt: skip
    """dQ of one block of queries for one (batch row, head): the forward's loop over keys, again. `DQ` is laid out
    as Q."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_in, d_in = offs_m < QLEN, offs_d < HEAD_DIM
    q_mask = q_in[:, None] & d_in[None, :]
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=q_mask, other=0.0,
    )  # fmt: skip
    do = tl.load(
        DO + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=q_mask, other=0.0,
    )  # fmt: skip
    slope, window = _head_constants(SLOPES, WINDOWS, h, HAS_WINDOW)
    lse = tl.load(LSE + bh * QLEN + offs_m, mask=q_in, other=float("inf"))
    lse += _row_shift(slope, offs_m, start_m * BLOCK_M, ROW_SHIFT)
    delta = tl.load(DELTA + bh * QLEN + offs_m, mask=q_in, other=0.0)
    key_rows = b * stride_lb
    q_pos, q_doc = _query_layout(POS, DOCS, key_rows, offs_m, stride_ls, PAST, QLEN, PLAIN, HAS_DOCS)
    first_query = PAST + start_m * BLOCK_M
    lo, whole_start, whole_stop, hi = _key_range(
        DSTART, key_rows, first_query, window, stride_ls, KLEN, BLOCK_M, BLOCK_N,
        PLAIN, HAS_WINDOW, DOCUMENT_SKIP, WINDOW_SKIP,
    )  # fmt: skip

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * stride_kb + (h // GROUPS) * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b * stride_vb + (h // GROUPS) * stride_vh + offs_d[None, :] * stride_vd
    for part in tl.static_range(3):  # as in the forward
        start, stop = _part(lo, whole_start, whole_stop, hi, part)
        dq = _dq_tiles(
            dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, start, stop, d_in, offs_m, q_pos, q_doc,
            key_rows, slope, window, qk_scale, first_query, POS, VALID, DOCS, stride_ls, PAST, KLEN,
            BLOCK_N, part != 1, PLAIN, HAS_VALID, HAS_DOCS, HAS_WINDOW, ROW_SHIFT, PRECISION,
        )  # fmt: skip

    tl.store(
        DQ + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask,
    )  # fmt: skip


_HELPERS = (
    "_alibi_scores",
    "_row_shift",
    "_query_layout",
    "_head_constants",
    "_part",
    "_key_tile",
    "_key_range",
    "_forward_tiles",
    "_dkdv_tiles",
    "_dq_tiles",
)
# Tile shapes tried once per (head dimension, length bucket, layout kind) by `triton.autotune` on the GPU:
# (BLOCK_M, BLOCK_N, warps, stages). The forward and dQ loop over keys for a block of queries; dK/dV the other way.
FORWARD_CONFIGS = ((128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 4))
DKDV_CONFIGS = ((32, 128, 4, 4), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (128, 128, 8, 2))
DQ_CONFIGS = ((128, 32, 4, 4), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2))
TUNING_KEY = ["HEAD_DIM", "LEN_BUCKET", "PLAIN", "HAS_DOCS", "HAS_WINDOW"]
INTERPRETER_BLOCK = 16  # tl.dot's smallest tile; the interpreter runs one config
# Compile options asked for by name: each score is one fused multiply-add (`dot * qk_scale + bias`), and fusion is
# Triton's default only until 3.10 (3.9 warns that it turns off then).
COMPILE_OPTIONS = dict(enable_fp_fusion=True)


@functools.cache
def kernels(interpret: bool) -> types.SimpleNamespace:
    """The three kernels, built once per mode: interpreted (CPU tensors, numpy) or compiled and autotuned (GPU).

    Each kernel and helper is rebuilt over a namespace of its own, so the kernels call the helpers in the same mode
    (a compiled helper cannot be called from an interpreted kernel, nor the reverse).
    """
    namespace = dict(globals())
    if interpret:
        # By name: a literal import would make transformers' remote-code loader require Triton (it skips only
        # imports inside `try`).
        decorate = importlib.import_module("triton.runtime.interpreter").InterpretedFunction
    else:
        decorate = triton.jit
    built = {}
    for name in (*_HELPERS, "_forward", "_backward_dkdv", "_backward_dq"):
        function = types.FunctionType(globals()[name].__code__, namespace, name)
        if interpret or name in _HELPERS:
            namespace[name] = built[name] = decorate(function)
        else:  # lengths vary call to call: one compiled kernel for all, not one per divisibility by 16
            namespace[name] = built[name] = decorate(function, do_not_specialize=["QLEN", "KLEN", "PAST"])
    if interpret:
        return types.SimpleNamespace(forward=built["_forward"], dkdv=built["_backward_dkdv"], dq=built["_backward_dq"])

    def tuned(kernel, shapes):
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]
        return triton.autotune(configs=configs, key=TUNING_KEY)(kernel)

    return types.SimpleNamespace(
        forward=tuned(built["_forward"], FORWARD_CONFIGS),
        dkdv=tuned(built["_backward_dkdv"], DKDV_CONFIGS),
        dq=tuned(built["_backward_dq"], DQ_CONFIGS),
    )
