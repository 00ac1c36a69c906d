"""The fused paths build no L x L tensor: peak memory grows linearly in the length."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

LENGTH = 8192
CASES = [
    ("eager", 2048, True),  # control: eager attention forms every score
    ("sdpa", 2048, True),  # a padded batch: the CPU default on each row's tokens gathered ahead of its padding
    ("sdpa", 3 * LENGTH // 2, False),  # the CPU default: steep heads blocked at their reach (the widest, 10,240)
    ("sdpa", 3 * LENGTH, False),
    ("flex_attention", LENGTH, False),
    ("flex_attention", LENGTH, True),
    ("default-on-a-gpu-path", LENGTH, False),  # no attn_implementation, the CPU standing in for CUDA: flex
    ("sdpa-windowed", LENGTH, False),  # windowed ALiBi (cutoff 8: windows 32 ... 2,048), the blocked path
    ("sdpa-packed", LENGTH, False),  # packed documents of 256 tokens: every head blocked, cut at each document
    ("sdpa-packed", LENGTH, True),  # and padded: compacted first
]

PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    from alibi_lm import AlibiForCausalLM
    from alibi_lm.modeling.modeling_alibi import AlibiModel
    from tests.tiny import random_ids, tiny_config, tiny_model

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    peaks = {}
    for backend, length, padded in json.loads(sys.argv[1]):
        size = dict(num_attention_heads=8, hidden_size=64)
        if backend == "default-on-a-gpu-path":
            AlibiModel.fused_default_devices = ("cuda", "cpu")
            model = AlibiForCausalLM(tiny_config(**size)).eval()
        elif backend == "sdpa-windowed":
            model = tiny_model(attn_implementation="sdpa", alibi_window_cutoff=8.0, **size)
        elif backend == "sdpa-packed":
            model = tiny_model(attn_implementation="sdpa", **size)
        else:
            model = tiny_model(attn_implementation=backend, **size)
        ids = random_ids(1, length)
        mask = torch.ones_like(ids)
        if padded:
            mask[0, :1] = 0
        documents = torch.arange(length)[None] // 256 if backend == "sdpa-packed" else None
        rises = []
        with torch.no_grad():
            model(ids, attention_mask=mask, document_ids=documents, logits_to_keep=1)  # compile and warm up
            for _ in range(3):  # the least of three: an L x L tensor shows in every forward, a stray allocation not
                open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set (VmHWM)
                base = status("VmRSS")
                model(ids, attention_mask=mask, document_ids=documents, logits_to_keep=1)
                rises.append(status("VmHWM") - base)
        peaks[f"{backend}-{length}-{padded}"] = min(rises) / 2**20
    print(json.dumps(peaks))
    """
)

# At 8192 tokens a single L x L bool mask is 64 MiB (a [1, 8, L, L] fp32 bias 2 GiB); everything linear
# in L here is a few MiB. The control shows the probe sees a quadratic tensor when one exists.
LINEAR_BOUND_MIB = 24

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


@pytest.fixture(scope="module")
def peaks() -> dict[str, float]:
    """Peak resident memory (MiB) that a warm forward adds, per case, measured in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(CASES)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_quadratic_mask(peaks):
    assert peaks["eager-2048-True"] > 0.5 * 8 * 2048 * 2048 * 4 / 2**20


def test_a_padded_batch_on_the_cpu_default_builds_no_length_squared_tensor(peaks):
    # It took the 4-D mask until 2026-12-06 (the [1, 8, L, L] fp32 bias alone is 128 MiB at 2,048 tokens).
    assert peaks["sdpa-2048-True"] < LINEAR_BOUND_MIB


def test_the_cpu_default_grows_linearly_in_the_length(peaks):
    # Heads whose bias silences keys within the sequence run blocked up to their reach (40 / m_h tokens), each with
    # one n x (w + n) fp32 bias pattern that no length changes plus key and value spans linear in L (a few MiB per 10k
    # tokens at this width). Both lengths are past the widest reach (10,240 tokens with 8 heads), so the same heads are
    # blocked in both. What the resident set shows of that depends on what the allocator reuses from the warm-up:
    # 24k -> 48k measured 88 -> 60 MiB and 73 -> 104 MiB here (2 and 1 threads), 20 -> 48 MiB in a clean-clone CI run,
    # and 12k -> 24k 55 -> 76 MiB, so a ratio of the two is no test (a linear cost alone doubles). The growth is:
    # doubling the length adds 3 x 12,288^2 entries to any L x L tensor, 432 MiB for one bool mask, the least such a
    # tensor can cost; linear growth here is tens of MiB.
    small, large = peaks[f"sdpa-{3 * LENGTH // 2}-False"], peaks[f"sdpa-{3 * LENGTH}-False"]
    least_quadratic_growth = ((3 * LENGTH) ** 2 - (3 * LENGTH // 2) ** 2) / 2**20
    assert large - small < least_quadratic_growth / 4 and large < 256


@pytest.mark.parametrize("padded", [False, True])
def test_flex_attention_builds_no_length_squared_tensor(peaks, padded):
    assert peaks[f"flex_attention-{LENGTH}-{padded}"] < LINEAR_BOUND_MIB


def test_the_default_backend_on_a_gpu_path_builds_no_length_squared_tensor(peaks):
    assert peaks[f"default-on-a-gpu-path-{LENGTH}-False"] < LINEAR_BOUND_MIB


def test_windowed_alibi_builds_no_length_squared_tensor(peaks):
    # Per head O(L (w + n) / n) plus one n x (w + n) bias pattern: 512 x 2,560 for the widest head here (window
    # 2,048); a window of 5,120 (cutoff 20 with 8 heads) would make that pattern 24 MiB, independent of L.
    assert peaks[f"sdpa-windowed-{LENGTH}-False"] < LINEAR_BOUND_MIB


@pytest.mark.parametrize("padded", [False, True])
def test_packed_documents_on_the_cpu_default_build_no_length_squared_tensor(peaks, padded):
    # They took the 4-D mask until 2026-12-06, padded ones until 2026-12-07 ([1, 8, L, L] fp32: 2 GiB here). Now
    # each head's blocks reach back to their documents' starts: one head's [1, blocks, 128, 384] fp32 masks (12 MiB)
    # are alive at a time.
    assert peaks[f"sdpa-packed-{LENGTH}-{padded}"] < LINEAR_BOUND_MIB
