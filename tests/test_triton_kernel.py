"""The Triton flash kernel with ALiBi per tile (`alibi_triton`): its checks in Triton's interpreter, its compilation
for the GPU, and the errors where it cannot run.

The interpreter needs TRITON_INTERPRET=1 before Triton is imported, so its checks (tests/interpreted/) run in a
process of their own. The kernels are compiled for Hopper and Ampere with Triton's bundled toolchain, which needs no
GPU: a kernel that only the interpreter accepts fails there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from alibi_lm.modeling import alibi_triton, alibi_triton_kernels  # noqa: E402
from alibi_lm.modeling.alibi_masks import ALIBI_TRITON  # noqa: E402
from tests.tiny import random_ids, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "interpreted" / "triton_kernel_checks.py"


def test_the_kernel_matches_the_reference_in_triton_s_interpreter():
    """Forward, backward, tile skipping and the model on `alibi_triton` (tests/interpreted/), all passing."""
    import numpy

    from alibi_lm.modeling.configuration_alibi import release

    if release(triton.__version__) < (3, 7) and release(numpy.__version__) >= (2, 4):
        pytest.skip(
            f"Triton {triton.__version__}'s interpreter turns loop bounds into ints from 1-element arrays, which numpy "
            f"{numpy.__version__} refuses ('only 0-dimensional arrays can be converted to Python scalars'): with torch "
            "2.10's Triton 3.6.0 all 22 checks pass on numpy 2.3.5 and fail on 2.4.6. Use numpy<2.4 or Triton>=3.7."
        )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    summary = run.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed", summary) and int(summary.split()[0]) == 22, report  # nothing skipped


def brute_force_bounds(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    start, end = torch.empty_like(document_ids), torch.empty_like(document_ids)
    for row, ids in enumerate(document_ids.tolist()):
        for slot, document in enumerate(ids):
            same = [other for other, id_ in enumerate(ids) if id_ == document]
            start[row, slot], end[row, slot] = same[0], same[-1] + 1
    return start, end


def test_document_bounds_are_each_document_s_first_and_past_last_slot_eager_and_compiled():
    """Runs and ids that come back after another document (their bounds then span the gap), and one slot rows."""
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 4, (3, 37), generator=generator), torch.tensor([[5]]), torch.zeros(2, 9, dtype=int)]
    batches.append(batches[0].sort(dim=1).values)
    compiled = torch.compile(alibi_triton.document_bounds, fullgraph=True, dynamic=True)
    for document_ids in batches:
        expected = brute_force_bounds(document_ids)
        for bounds in (alibi_triton.document_bounds(document_ids), compiled(document_ids)):
            assert torch.equal(bounds[0], expected[0]) and torch.equal(bounds[1], expected[1])


def test_where_it_cannot_run_it_says_why(monkeypatch):
    model = tiny_model(attn_implementation=ALIBI_TRITON)
    ids = random_ids(1, 20)
    with pytest.raises(ValueError, match="runs on CUDA devices.*TRITON_INTERPRET=1"):
        model(ids)
    monkeypatch.setattr(alibi_triton, "triton", None)
    with pytest.raises(ImportError, match="needs Triton"):
        model(ids)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cannot take position_encoding='t5'"):
        tiny_model(attn_implementation=ALIBI_TRITON, position_encoding="t5")(ids)
    training = tiny_model(attn_implementation=ALIBI_TRITON, attention_dropout=0.1).train()
    with pytest.raises(ValueError, match="no attention dropout"):
        training(ids)


def compile_for(kernel, arch: int, dtype: str, **flags):
    """Compile one autotuned kernel for `arch` (90: Hopper, 80: Ampere) with Triton's bundled toolchain."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = kernel.fn
    names = [parameter.name for parameter in jit.params]
    constants = dict(
        HEAD_DIM=64, BLOCK_D=64, BLOCK_M=128, BLOCK_N=64, PLAIN=True, HAS_VALID=False, HAS_DOCS=False,
        HAS_WINDOW=False, DOCUMENT_SKIP=False, WINDOW_SKIP=False, ROW_SHIFT=dtype != "fp32",
        PRECISION="ieee" if dtype == "fp32" else "tf32",
    )  # fmt: skip
    constants.update(flags)
    kinds = {"Q": dtype, "K": dtype, "V": dtype, "OUT": dtype, "DO": dtype, "DQ": dtype, "DK": dtype, "DV": dtype}
    kinds.update(LSE="fp32", DELTA="fp32", SLOPES="fp32", VALID="i8")

    def kind(name):
        if name in constants:
            return "constexpr"
        if name in kinds:
            return "*" + kinds[name]
        if name in ("WINDOWS", "POS", "DOCS", "DSTART", "DEND"):
            return "*i32"
        return "fp32" if name.endswith("scale") else "i32"

    source = ASTSource(jit, {name: kind(name) for name in names}, {(names.index(k),): v for k, v in constants.items()})
    options = dict(num_warps=4, num_stages=3, **alibi_triton_kernels.COMPILE_OPTIONS)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


GENERAL = dict(PLAIN=False, HAS_VALID=True, HAS_DOCS=True, HAS_WINDOW=True, DOCUMENT_SKIP=True)


@pytest.mark.parametrize(
    "arch, dtype, flags",
    [
        (90, "bf16", {}),
        (90, "bf16", dict(HAS_WINDOW=True, WINDOW_SKIP=True)),
        (90, "bf16", dict(GENERAL, ROW_SHIFT=False)),
        (90, "fp32", GENERAL),
        (80, "fp16", dict(HAS_WINDOW=True, WINDOW_SKIP=True)),
    ],
    ids=[
        "hopper-bf16-plain",
        "hopper-bf16-windows",
        "hopper-bf16-packed",
        "hopper-fp32-everything",
        "ampere-fp16-windows",
    ],
)
def test_the_kernels_compile_for_the_gpu(arch, dtype, flags):
    """Every kernel compiles to a cubin with fused multiply-adds (the launches' `COMPILE_OPTIONS`: without them, Triton
    3.10's default, the PTX has no `fma.rn.f32`); on Hopper, the 16-bit matmuls use its warpgroup tensor-core
    instructions."""
    built = alibi_triton_kernels.kernels(interpret=False)
    for kernel in (built.forward, built.dkdv, built.dq):
        compiled = compile_for(kernel, arch, dtype, **flags)
        assert compiled.asm["cubin"]
        assert "fma.rn.f32" in compiled.asm["ptx"]
        if arch == 90 and dtype == "bf16":
            assert "wgmma.mma_async" in compiled.asm["ptx"]
