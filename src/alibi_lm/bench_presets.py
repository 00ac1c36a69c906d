"""The sizes `alibi-lm bench` measures at, the shapes of each, and the promises (targets) checked on the results.

A preset is pure data: `alibi_lm.bench` builds the models and runs the measurements a preset lists
(`measurement_plan`), and `alibi_lm.bench_report` checks its targets on the resulting rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """One promise of the speed issue, checked on the best of our ALiBi rows of one measurement."""

    measurement: str  # a measurement name, e.g. "train 1x2048", "prefill 4096", "decode"
    metric: str  # "speed" (tokens/s) or "memory" (peak bytes)
    reference: str | None  # "bloom", "falcon", "no_bias", "dense", or None for an absolute bound in bytes
    op: str  # ">=" or "<="
    threshold: float
    family: str = "alibi"  # whose rows: "alibi" (dense) or "windowed"

    def describe(self) -> str:
        who = "" if self.family == "alibi" else f"{self.family} "
        if self.reference is None:
            return f"{self.measurement}: {who}{self.metric} {self.op} {self.threshold / 2**30:g} GiB"
        return f"{self.measurement}: {who}{self.metric} vs {self.reference} {self.op} {self.threshold:g}x"


@dataclass(frozen=True)
class Preset:
    """One benchmark size and the shapes measured at it."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    dtype: str  # "float32" or "bfloat16": the weights' dtype (no autocast)
    train_shapes: tuple[tuple[int, int], ...]  # (batch, length)
    prefill_lengths: tuple[int, ...]
    decode_prompt: int
    decode_new_tokens: int
    backends: tuple[str, ...]  # our model's attention backends
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    targets: tuple[Target, ...] = ()
    families: tuple[str, ...] | None = None  # the models run by default (None: all but windowed ALiBi)
    window_cutoff: float = 20.0  # the windowed model's alibi_window_cutoff


def _cpu_small_targets() -> tuple[Target, ...]:
    train = "train 1x2048"
    return (
        Target(train, "speed", "bloom", ">=", 1.8),
        Target(train, "speed", "falcon", ">=", 1.3),
        Target(train, "speed", "no_bias", ">=", 0.95),
        Target("prefill 4096", "memory", "bloom", "<=", 0.25),
    )


def _gpu_targets() -> tuple[Target, ...]:
    targets = []
    for train in ("train 8x2048", "train 1x8192"):
        targets += [
            Target(train, "speed", "falcon", ">=", 1.15),
            Target(train, "memory", "falcon", "<=", 1.0),
            Target(train, "speed", "no_bias", ">=", 0.90),
        ]
    targets += [
        Target("prefill 16384", "memory", None, "<=", 2 * 2**30),
        Target("decode", "speed", "bloom", ">=", 3.0),
    ]
    return tuple(targets)


PRESETS: dict[str, Preset] = {
    # End to end in seconds on a CPU: the tests run it. No flex here, since it compiles.
    "tiny": Preset(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        vocab_size=128,
        dtype="float32",
        train_shapes=((1, 64),),
        prefill_lengths=(128,),
        decode_prompt=16,
        decode_new_tokens=8,
        backends=("eager", "sdpa"),
        repeats=2,
    ),
    # The CPU comparison: fp32, batch 1, a training step at 2048 and a 4096-token prefill.
    "cpu-small": Preset(
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        vocab_size=8192,
        dtype="float32",
        train_shapes=((1, 2048),),
        prefill_lengths=(4096,),
        decode_prompt=128,
        decode_new_tokens=64,
        backends=("eager", "sdpa", "flex_attention"),
        repeats=5,
        targets=_cpu_small_targets(),
    ),
    # The model and batch `alibi-lm demo` trains (0.53M parameters, 16 x 32 tokens a step; tests/test_bench.py
    # checks they match `DemoSettings`' defaults): where the bias is a large share of a tiny model's attention, is
    # ALiBi still as fast as no position encoding?
    "cpu-demo": Preset(
        hidden_size=128,
        num_layers=2,
        num_heads=8,
        vocab_size=1024,
        dtype="float32",
        train_shapes=((16, 32),),
        prefill_lengths=(1024,),
        decode_prompt=32,
        decode_new_tokens=256,
        backends=("eager", "sdpa"),
        repeats=7,
        targets=(Target("train 16x32", "speed", "no_bias", ">=", 0.95),),
    ),
    # The demo's earlier model (vocabulary 2048, as the README's figures of it were measured) at long prompts:
    # windowed ALiBi (cutoff 20: windows 40 ... 5,120 tokens for slopes 1/2 ... 1/256) against dense ALiBi and dense
    # causal attention with no bias. Bloom, MPT and Falcon would build a
    # 137 GB L x L tensor at 65,536 tokens, so they are left out.
    "cpu-long": Preset(
        hidden_size=128,
        num_layers=2,
        num_heads=8,
        vocab_size=2048,
        dtype="float32",
        train_shapes=((1, 8192),),  # where the windows halve the work, so training takes the blocked path
        prefill_lengths=(4096, 16384, 65536),
        decode_prompt=4096,
        decode_new_tokens=64,
        backends=("sdpa",),
        repeats=2,
        warmup=0,  # nothing compiles; a 65,536-token forward of a dense model takes over a minute
        families=("alibi", "windowed", "none"),
        targets=(
            Target("prefill 16384", "speed", "no_bias", ">=", 1.5, family="windowed"),
            Target("prefill 65536", "speed", "no_bias", ">=", 1.5, family="windowed"),
            Target("train 1x8192", "speed", "no_bias", ">=", 0.95, family="windowed"),
        ),
    ),
    # ~350M parameters (24 x 12 x 1024^2 + 50304 x 1024 tied), bf16, sized to finish in ~6 minutes on an H200.
    # Our eager backend is left out: it is Bloom's L x L algorithm and would only spend the time budget.
    "gpu-350m": Preset(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        vocab_size=50304,
        dtype="bfloat16",
        train_shapes=((8, 2048), (1, 8192)),
        prefill_lengths=(16384,),
        decode_prompt=512,
        decode_new_tokens=64,
        backends=("sdpa", "flex_attention", "flash_attention_2", "alibi_triton"),
        device="cuda",
        targets=_gpu_targets(),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a `ValueError` lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown bench preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def max_length(preset: Preset) -> int:
    """The longest sequence any measurement of `preset` runs (MPT sizes its ALiBi table by it)."""
    lengths = [length for _, length in preset.train_shapes] + list(preset.prefill_lengths)
    return max(lengths + [preset.decode_prompt + preset.decode_new_tokens])


def measurement_plan(preset: Preset) -> list[dict[str, Any]]:
    """The measurements of a preset in order: name, kind, batch, length (prompt length for decoding), tokens."""
    plan = [
        {"measurement": f"train {b}x{n}", "kind": "train", "batch": b, "length": n, "tokens": b * n}
        for b, n in preset.train_shapes
    ]
    plan += [
        {"measurement": f"prefill {n}", "kind": "prefill", "batch": 1, "length": n, "tokens": n}
        for n in preset.prefill_lengths
    ]
    prompt, new = preset.decode_prompt, preset.decode_new_tokens
    return plan + [{"measurement": "decode", "kind": "decode", "batch": 1, "length": prompt, "tokens": new}]


__all__ = ["PRESETS", "Preset", "Target", "get_preset", "max_length", "measurement_plan"]
