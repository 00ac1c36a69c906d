"""`alibi-lm bench`: our ALiBi model against transformers' ALiBi models, side by side in one process.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

Every model has the same size (hidden, layers, heads, vocabulary, FFN 4x hidden) and random weights:

- `AlibiForCausalLM` on each attention backend of the preset;
- the same model with `position_encoding="none"` on the same backend: the no-bias limit;
- transformers' `BloomForCausalLM` and `MptForCausalLM` (eager only: neither declares sdpa or flex support)
  and `FalconForCausalLM(alibi=True)` (eager, and sdpa with an L x L float mask; its flash path refuses alibi).

Three measurements:

- training step: forward and backward of the causal-LM loss (no optimizer step), tokens/s and peak memory;
- prefill: one no-grad forward over a long prompt returning the last position's logits, without a KV cache
  (the cache is the same size for every model here: 2 x layers x length x hidden), time and peak memory;
- decoding: `generate` at batch 1, greedy, exactly `decode_new_tokens` new tokens (`min_new_tokens` stops an
  early end), tokens/s; plus our model with a static cache and a `torch.compile`d forward, checked to generate
  the same tokens as the dynamic cache.

The repetitions of the models interleave (A B C A B C ...) and the tables report medians, because a shared
machine is noisy. Peak memory is what one model's call needs: its own weights plus the peak of what the call
allocates above what is live when it starts, so the other models held in the process do not count. On CUDA the
peak comes from `torch.cuda.max_memory_allocated`. On the CPU it is the running sum of the allocation and free
events that torch's profiler records with `profile_memory=True`: these come from the c10 CPU allocator, so they
cover every tensor, compiled (inductor) code included, and nothing else. Process RSS is not used: glibc keeps
freed heap pages resident and reuses them, so after one model has run, RSS understates the next one's peak.

The benchmark counts the graphs `torch.compile` builds while the repetitions are timed (warm-up done, so any is a
recompile) and the times dynamo hit its recompile limit, after which it silently runs uncompiled code.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.autograd import DeviceType
from tqdm.auto import tqdm
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    CompileConfig,
    FalconConfig,
    FalconForCausalLM,
    MptConfig,
    MptForCausalLM,
    PreTrainedModel,
)

from .modeling.configuration_alibi import AlibiConfig
from .modeling.modeling_alibi import AlibiForCausalLM

OUR_BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2")
# What transformers 5.24 lets each baseline build: Bloom and MPT raise for sdpa and flex_attention, Falcon
# raises for flex_attention, and Falcon's flash_attention_2 raises "`alibi` is not supported".
BASELINE_BACKENDS = {"bloom": ("eager",), "mpt": ("eager",), "falcon": ("eager", "sdpa")}
FAMILIES = ("alibi", "none", *BASELINE_BACKENDS)
LABELS = {
    "alibi": "alibi-lm",
    "none": "alibi-lm, no bias",
    "bloom": "Bloom",
    "mpt": "MPT",
    "falcon": "Falcon-alibi",
}
STATIC_DECODE_MODES = ("compile", "eager", "off")
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class Target:
    """One promise of the speed issue, checked on the best of our ALiBi rows of one measurement."""

    measurement: str  # a measurement name, e.g. "train 1x2048", "prefill 4096", "decode"
    metric: str  # "speed" (tokens/s) or "memory" (peak bytes)
    reference: str | None  # "bloom", "falcon", "no_bias", or None for an absolute bound in bytes
    op: str  # ">=" or "<="
    threshold: float

    def describe(self) -> str:
        if self.reference is None:
            return f"{self.measurement}: {self.metric} {self.op} {self.threshold / 2**30:g} GiB"
        return f"{self.measurement}: {self.metric} vs {self.reference} {self.op} {self.threshold:g}x"


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
    # The model and batch `alibi-lm demo` trains (0.66M parameters, 16 x 64 tokens a step): where the bias is a
    # large share of a tiny model's attention, is ALiBi still as fast as no position encoding?
    "cpu-demo": Preset(
        hidden_size=128,
        num_layers=2,
        num_heads=8,
        vocab_size=2048,
        dtype="float32",
        train_shapes=((16, 64),),
        prefill_lengths=(1024,),
        decode_prompt=32,
        decode_new_tokens=256,
        backends=("eager", "sdpa"),
        repeats=7,
        targets=(Target("train 16x64", "speed", "no_bias", ">=", 0.95),),
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
        backends=("sdpa", "flex_attention", "flash_attention_2"),
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


def build_model(family: str, backend: str, preset: Preset, device: torch.device) -> PreTrainedModel:
    """One model of `family` at the preset's size, seeded, on `device` in the preset's dtype."""
    h, layers, heads, vocab = preset.hidden_size, preset.num_layers, preset.num_heads, preset.vocab_size
    if family in ("alibi", "none"):
        train_length = max((length for _, length in preset.train_shapes), default=512)
        config = AlibiConfig(
            vocab_size=vocab,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * h,
            max_position_embeddings=train_length,
            position_encoding="alibi" if family == "alibi" else "none",
        )
        cls: type[PreTrainedModel] = AlibiForCausalLM
    elif family == "bloom":
        config, cls = BloomConfig(vocab_size=vocab, hidden_size=h, n_layer=layers, n_head=heads), BloomForCausalLM
    elif family == "mpt":
        config = MptConfig(
            vocab_size=vocab,
            d_model=h,
            n_layers=layers,
            n_heads=heads,
            expansion_ratio=4,
            max_seq_len=max_length(preset),
            no_bias=False,
        )
        cls = MptForCausalLM
    elif family == "falcon":
        # The classic Falcon block (one KV head per head, sequential, biases) so that only attention differs.
        config = FalconConfig(
            vocab_size=vocab,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_hidden_size=4 * h,
            alibi=True,
            multi_query=False,
            new_decoder_architecture=False,
            parallel_attn=False,
            bias=True,
        )
        cls = FalconForCausalLM
    else:
        raise ValueError(f"Unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    torch.manual_seed(0)
    with torch.device(device):
        # `dtype=` as from_pretrained takes it, so fp32 buffers the model asks for stay fp32.
        return cls._from_config(config, attn_implementation=backend, dtype=getattr(torch, preset.dtype))


@dataclass
class Subject:
    """One model on one attention backend."""

    family: str
    backend: str
    model: PreTrainedModel

    @property
    def key(self) -> str:
        return f"{self.family}/{self.backend}"

    @property
    def weight_bytes(self) -> int:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Measured:
    """What the interleaved runner saw for one call site."""

    times: list[float] = field(default_factory=list)  # wall clock
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU time, all threads
    peak_bytes: int | None = None  # above what was live when the call started
    recompiles: int = 0  # graphs compiled while the repetitions were timed
    error: str | None = None
    output: Any = None  # the last warm-up call's return value


@dataclass
class Row:
    """One line of a results table."""

    measurement: str
    kind: str  # "train", "prefill" or "decode"
    family: str
    label: str
    backend: str
    batch: int
    length: int  # the sequence length, or the prompt length for decoding
    tokens: int  # tokens per call: batch x length, length, or the new tokens
    cache: str | None = None  # decoding only: "dynamic", "static+compile" or "static"
    times_s: list[float] = field(default_factory=list)  # wall clock
    cpu_times_s: list[float] = field(default_factory=list)  # process CPU time
    seconds: float | None = None  # median of the chosen clock's times
    tokens_per_s: float | None = None
    weight_bytes: int | None = None
    peak_bytes: int | None = None  # weights + the call's own peak
    recompiles: int = 0
    error: str | None = None
    vs_bloom: float | None = None  # tokens/s ratio
    vs_falcon: float | None = None
    vs_no_bias: float | None = None
    mem_vs_bloom: float | None = None  # peak-memory ratio
    mem_vs_falcon: float | None = None
    mem_vs_no_bias: float | None = None
    vs_dynamic: float | None = None  # static-cache decoding over the dynamic cache
    same_tokens: bool | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def recompile_limit_hits() -> int:
    """How many times dynamo gave up compiling a frame because it hit its recompile limit."""
    hits = torch._dynamo.utils.counters["unimplemented"]
    return sum(n for reason, n in hits.items() if "recompile limit" in reason.lower() or "cache_size" in reason)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++-level stderr: kineto prints a line per profiler start and stop."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes that `fn()` allocates on `device` above what is live when it starts."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports cpu and cuda devices, got {device.type!r}.")
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _quiet_stderr(), torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    # Frees of tensors allocated before the window count too: that memory is truly gone.
    events.sort(key=lambda e: e.start_ns())  # stable: ties keep the recorded order
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _error_text(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory"
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def run_interleaved(
    calls: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    measure_memory: bool = True,
    progress: tqdm | None = None,
) -> dict[str, Measured]:
    """Warm up and measure the memory of each call, then time them interleaved: A B C A B C ...

    A call that raises (out of memory, an unsupported backend) gets the error and is left out of the timing.
    """
    results = {key: Measured() for key in calls}
    for key, fn in calls.items():
        try:
            for _ in range(warmup):
                results[key].output = fn()
            if measure_memory:
                results[key].peak_bytes = peak_memory(fn, device)
        except Exception as err:  # noqa: BLE001 -- a failing model is a result, not a crash of the benchmark
            results[key].error = _error_text(err)
            _release(device)  # the failed call's tensors die with its frames
        if progress is not None:
            progress.update()
    for _ in range(repeats):
        for key, fn in calls.items():
            if results[key].error is not None:
                continue
            graphs = _compiled_graphs()
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            results[key].times.append(time.perf_counter() - start)
            results[key].cpu_times.append(time.process_time() - cpu_start)
            results[key].recompiles += _compiled_graphs() - graphs
            if progress is not None:
                progress.update()
    return results


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_step(model: PreTrainedModel, input_ids: torch.Tensor) -> None:
    """Forward and backward of the causal-LM loss; gradients are dropped so each step allocates its own."""
    model.train()
    try:
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
    finally:  # also after an out-of-memory error, so that stale gradients don't hold memory
        model.zero_grad(set_to_none=True)


@torch.inference_mode()
def prefill(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """One no-grad forward over the prompt; returns the last position's logits `[B, 1, vocab]`."""
    model.eval()
    return model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits


def generate_tokens(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    new_tokens: int,
    cache: str = "dynamic",
    compiled: bool = False,
) -> torch.Tensor:
    """Greedy `generate` of exactly `new_tokens` tokens; `[B, prompt + new_tokens]`.

    `cache="static"` preallocates the KV cache (`cache_implementation="static"`); with `compiled=True`,
    transformers compiles the forward for the decoding steps (`compile_config`). It compiles by itself only on
    accelerators; `_compile_all_devices` asks it to on the CPU too, where CUDA graphs do not exist.
    """
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}.")
    model.eval()
    kwargs: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
    }
    if cache == "static":
        kwargs["cache_implementation"] = "static"
        if compiled:
            on_cpu = input_ids.device.type == "cpu"
            config = CompileConfig(mode="default" if on_cpu else "reduce-overhead")
            config._compile_all_devices = True
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
    with torch.inference_mode():
        return model.generate(input_ids, **kwargs)


def _random_ids(batch: int, length: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


def _our_backends(kind: str, device: torch.device, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The requested backends of our model that can run `kind` (train, prefill, decode) on `device`."""
    backends = []
    for backend in requested:
        if backend == "flash_attention_2" and not (device.type == "cuda" and importlib.util.find_spec("flash_attn")):
            continue  # needs the flash_attn package and a GPU
        if backend == "flex_attention" and device.type == "cpu" and kind == "train":
            continue  # flex_attention's backward raises NotImplementedError on the CPU
        if backend == "flex_attention" and kind == "decode":
            continue  # our flex path decodes single tokens with sdpa: the row would repeat sdpa's
        backends.append(backend)
    return tuple(backends)


def _rows_from(
    measured: dict[str, Measured],
    subjects: dict[str, Subject],
    base: dict[str, Any],
    cache: str | None = None,
    clock: str = "wall",
) -> list[Row]:
    rows = []
    for key, result in measured.items():
        subject = subjects[key.split("#")[0]]
        times = result.times if clock == "wall" else result.cpu_times
        seconds = statistics.median(times) if times else None
        row = Row(
            family=subject.family,
            label=LABELS[subject.family],
            backend=subject.backend,
            cache=cache if "#" not in key else key.split("#")[1],
            times_s=result.times,
            cpu_times_s=result.cpu_times,
            seconds=seconds,
            tokens_per_s=base["tokens"] / seconds if seconds else None,
            weight_bytes=subject.weight_bytes,
            peak_bytes=None if result.peak_bytes is None else subject.weight_bytes + result.peak_bytes,
            recompiles=result.recompiles,
            error=result.error,
            **base,
        )
        rows.append(row)
    return rows


def add_ratios(rows: list[Row]) -> None:
    """Fill the speed and memory ratios of each row against Bloom, the fastest Falcon, and our no-bias model.

    The no-bias reference of a row is our `position_encoding="none"` model on the same backend (and cache).
    """

    def ok(row: Row) -> bool:
        return row.error is None and row.tokens_per_s is not None

    by_measurement: dict[str, list[Row]] = {}
    for row in rows:
        by_measurement.setdefault(row.measurement, []).append(row)
    for group in by_measurement.values():
        dynamic = [r for r in group if r.cache in (None, "dynamic")]
        bloom = next((r for r in dynamic if r.family == "bloom" and ok(r)), None)
        falcons = [r for r in dynamic if r.family == "falcon" and ok(r)]
        falcon = max(falcons, key=lambda r: r.tokens_per_s, default=None)
        for row in group:
            if not ok(row):
                continue
            no_bias = next(
                (
                    r
                    for r in group
                    if r.family == "none" and r.backend == row.backend and r.cache == row.cache and ok(r)
                ),
                None,
            )
            for name, ref in (("bloom", bloom), ("falcon", falcon), ("no_bias", no_bias)):
                if ref is None or (name == "no_bias" and row.family not in ("alibi", "none")):
                    continue
                setattr(row, f"vs_{name}", row.tokens_per_s / ref.tokens_per_s)
                if row.peak_bytes and ref.peak_bytes:
                    setattr(row, f"mem_vs_{name}", row.peak_bytes / ref.peak_bytes)
            if row.cache and row.cache.startswith("static"):
                twin = next(
                    (r for r in group if r.family == row.family and r.backend == row.backend and r.cache == "dynamic"),
                    None,
                )
                if twin is not None and ok(twin):
                    row.vs_dynamic = row.tokens_per_s / twin.tokens_per_s


def check_targets(rows: list[Row], targets: tuple[Target, ...]) -> list[dict[str, Any]]:
    """Evaluate each target on the best of our ALiBi rows (fastest for speed, smallest for memory)."""
    results = []
    for target in targets:
        candidates = [
            r for r in rows if r.family == "alibi" and r.error is None and r.measurement == target.measurement
        ]
        if target.metric == "speed":
            candidates = [r for r in candidates if r.tokens_per_s is not None]
            best = max(candidates, key=lambda r: r.tokens_per_s, default=None)
        elif target.metric == "memory":
            candidates = [r for r in candidates if r.peak_bytes is not None]
            best = min(candidates, key=lambda r: r.peak_bytes, default=None)
        else:
            raise ValueError(f"Target metric must be 'speed' or 'memory', got {target.metric!r}.")
        value = None
        if best is not None:
            if target.reference is None:
                value = best.tokens_per_s if target.metric == "speed" else best.peak_bytes
            else:
                prefix = "vs_" if target.metric == "speed" else "mem_vs_"
                value = getattr(best, prefix + target.reference)
        passed = (
            None if value is None else (value >= target.threshold if target.op == ">=" else value <= target.threshold)
        )
        row = None if best is None else f"{best.label} [{best.backend}{'/' + best.cache if best.cache else ''}]"
        results.append(
            {"target": target.describe(), "row": row, "value": value, "threshold": target.threshold, "passed": passed}
        )
    return results


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


def run_bench(
    preset: Preset,
    device: torch.device,
    families: tuple[str, ...] = FAMILIES,
    static_decode: str = "compile",
    show_progress: bool = True,
    clock: str = "wall",
    on_measurement: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build every model, run the three measurements, and return the report (rows, targets, compile counts).

    `on_measurement` gets the report so far after each measurement, so that a run cut short keeps its results.

    `clock="cpu"` ranks by the process's CPU time instead of the wall clock: on a shared CPU machine with one
    torch thread, it leaves out the time other processes hold the cores.
    """
    if static_decode not in STATIC_DECODE_MODES:
        raise ValueError(f"static_decode must be one of {STATIC_DECODE_MODES}, got {static_decode!r}.")
    if clock not in CLOCKS or (clock == "cpu" and device.type != "cpu"):
        raise ValueError(f"clock must be one of {CLOCKS} ('cpu' only on a CPU device), got {clock!r}.")
    graphs_at_start, limit_hits_at_start = _compiled_graphs(), recompile_limit_hits()
    rows: list[Row] = []

    def report() -> dict[str, Any]:
        add_ratios(rows)
        compiles = {
            "graphs_compiled": _compiled_graphs() - graphs_at_start,
            "graphs_compiled_while_timing": sum(r.recompiles for r in rows),
            "recompile_limit_hits": recompile_limit_hits() - limit_hits_at_start,
        }
        return {
            "preset": asdict(preset),
            "clock": clock,
            "environment": environment(device),
            "rows": [asdict(r) for r in rows],
            "targets": check_targets(rows, preset.targets),
            "compile": compiles,
        }

    subjects: dict[str, Subject] = {}
    for family in families:
        backends = BASELINE_BACKENDS.get(family) or _our_backends("any", device, preset.backends)
        for backend in backends:
            subject = Subject(family, backend, build_model(family, backend, preset, device))
            subjects[subject.key] = subject

    def chosen(kind: str) -> dict[str, Subject]:
        ours = _our_backends(kind, device, preset.backends)
        return {k: s for k, s in subjects.items() if s.family not in ("alibi", "none") or s.backend in ours}

    plan = measurement_plan(preset)
    total = sum(len(chosen(step["kind"])) * (1 + preset.repeats) for step in plan)
    progress = tqdm(total=total, desc="bench", disable=not show_progress)
    for base in plan:
        kind, selected = base["kind"], chosen(base["kind"])
        ids = _random_ids(base["batch"], base["length"], preset.vocab_size, device)
        calls: dict[str, Callable[[], Any]]
        if kind == "train":
            calls = {k: functools.partial(train_step, s.model, ids) for k, s in selected.items()}
        elif kind == "prefill":
            calls = {k: functools.partial(prefill, s.model, ids) for k, s in selected.items()}
        else:
            tokens = base["tokens"]
            calls = {k: functools.partial(generate_tokens, s.model, ids, tokens) for k, s in selected.items()}
            if static_decode != "off" and "alibi/sdpa" in selected:
                compiled = static_decode == "compile"
                mode = "static+compile" if compiled else "static"
                model = selected["alibi/sdpa"].model
                calls[f"alibi/sdpa#{mode}"] = functools.partial(
                    generate_tokens, model, ids, tokens, "static", compiled
                )
                progress.total += 1 + preset.repeats
        progress.set_description(f"bench {base['measurement']}")
        measured = run_interleaved(
            calls, device, preset.repeats, preset.warmup, measure_memory=kind != "decode", progress=progress
        )
        new_rows = _rows_from(measured, subjects, base, "dynamic" if kind == "decode" else None, clock)
        if kind == "decode":
            reference = measured.get("alibi/sdpa")
            for row, key in zip(new_rows, measured):
                if "#" in key and reference is not None and reference.output is not None and row.error is None:
                    row.same_tokens = bool(torch.equal(measured[key].output, reference.output))
        rows += new_rows
        del calls, measured
        _release(device)
        if on_measurement is not None:
            on_measurement(report())
    progress.close()
    return report()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so that a table says where its numbers come from."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _mb(value: int | None) -> str:
    return _fmt(None if value is None else value / 2**20, ",.1f")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: one table per measurement, then the targets and the compile counts."""
    preset, env = report["preset"], report["environment"]
    title = (
        f"# alibi-lm bench: hidden {preset['hidden_size']}, {preset['num_layers']} layers, "
        f"{preset['num_heads']} heads, vocab {preset['vocab_size']}, {preset['dtype']}"
    )
    where = (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['cpu_threads']} CPU threads, {env['time_utc']}. Medians of {preset['repeats']} interleaved "
        f"repetitions, {report['clock']} clock; ratios are tokens/s (mem: peak memory) over the reference's."
    )
    lines = [title, "", where]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in report["rows"]:
        groups.setdefault(row["measurement"], []).append(row)
    for rows in groups.values():
        kind = rows[0]["kind"]
        if kind == "decode":
            title = f"Decoding: batch 1, {rows[0]['length']}-token prompt, {rows[0]['tokens']} new tokens, greedy"
            header = "| model | backend | cache | ms/token | tokens/s | ×Bloom | ×Falcon-alibi | ×no-bias | ×dynamic | same tokens |"
        else:
            title = (
                f"Training step (forward + backward), {rows[0]['batch']} × {rows[0]['length']} tokens"
                if kind == "train"
                else f"Prefill of {rows[0]['length']} tokens (no grad, no KV cache, last-position logits)"
            )
            header = "| model | backend | ms | tokens/s | peak MiB | ×Bloom | ×Falcon-alibi | ×no-bias | mem/Bloom | mem/Falcon-alibi | mem/no-bias |"
        lines += ["", f"## {title}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for r in rows:
            if r["error"] is not None:
                cells = [r["label"], r["backend"]] + ([r["cache"]] if kind == "decode" else []) + [r["error"]]
                lines.append("| " + " | ".join(cells) + " |")
                continue
            speed = [_fmt(r[k], ".2f", "×") for k in ("vs_bloom", "vs_falcon", "vs_no_bias")]
            recompiled = f" ({r['recompiles']} recompiles!)" if r["recompiles"] else ""
            if kind == "decode":
                same = "—" if r["same_tokens"] is None else ("yes" if r["same_tokens"] else "NO")
                cells = [r["label"], r["backend"], r["cache"], _fmt(1e3 * r["seconds"] / r["tokens"], ".2f")]
                cells += [
                    _fmt(r["tokens_per_s"], ",.1f") + recompiled,
                    *speed,
                    _fmt(r["vs_dynamic"], ".2f", "×"),
                    same,
                ]
            else:
                memory = [_fmt(r[k], ".2f") for k in ("mem_vs_bloom", "mem_vs_falcon", "mem_vs_no_bias")]
                cells = [r["label"], r["backend"], _fmt(1e3 * r["seconds"], ",.1f")]
                cells += [_fmt(r["tokens_per_s"], ",.0f") + recompiled, _mb(r["peak_bytes"]), *speed, *memory]
            lines.append("| " + " | ".join(cells) + " |")
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | our row | value | pass |", "|---|---|---|---|"]
        for t in report["targets"]:
            absolute = "GiB" in t["target"]
            value = _fmt(None if t["value"] is None else t["value"] / (2**30 if absolute else 1), ".2f")
            passed = "—" if t["passed"] is None else ("yes" if t["passed"] else "**no**")
            lines.append(f"| {t['target']} | {t['row'] or '—'} | {value} | {passed} |")
    c = report["compile"]
    compiles = (
        f"torch.compile: {c['graphs_compiled']} graphs compiled in all, {c['graphs_compiled_while_timing']} while "
        f"timing (recompiles), {c['recompile_limit_hits']} recompile-limit hits."
    )
    lines += ["", compiles]
    return "\n".join(lines) + "\n"


def _resolve_device(name: str | None, preset: Preset) -> torch.device:
    device = torch.device(name or preset.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("The bench asks for CUDA but none is available; pass --device cpu (and a CPU-sized preset).")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}.")
    return device


def _parse_list(text: str | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise ValueError(f"Unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}.")
    return items


def run(args: argparse.Namespace) -> int:
    """The `alibi-lm bench` command: run a preset, print the markdown table, write JSON and markdown."""
    preset = get_preset(args.preset)
    device = _resolve_device(args.device, preset)
    backends = _parse_list(args.backends, OUR_BACKENDS, "backend")
    families = _parse_list(args.models, FAMILIES, "model") or FAMILIES
    if backends:
        preset = replace(preset, backends=backends)
    if args.repeats is not None:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {args.repeats}.")
        preset = replace(preset, repeats=args.repeats)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()

    def write(report: dict[str, Any]) -> str:
        report["preset"]["name"] = args.preset
        markdown = to_markdown(report)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"bench_{args.preset}.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / f"bench_{args.preset}.md").write_text(markdown)
        return markdown

    try:  # restored afterwards: `main([...])` may run inside a longer process, such as the tests
        torch.set_num_threads(args.threads or threads)
        transformers.logging.set_verbosity_error()  # generate's per-call notices would bury the table
        # Our model flushes denormals as soon as it trains on the CPU (they make the SDPA backward ~1.7x
        # slower); set it before anything runs so every model, Bloom and Falcon included, gets the same.
        torch.set_flush_denormal(True)
        report = run_bench(preset, device, families, args.static_decode, not args.no_progress, args.clock, write)
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
    print(write(report))
    if args.out:
        print(f"wrote {Path(args.out) / f'bench_{args.preset}.json'} and .md")
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm bench`."""
    parser = subparsers.add_parser(
        "bench",
        help="speed and memory of alibi-lm against Bloom, MPT and Falcon-alibi",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--preset", default="cpu-small", help=f"one of {', '.join(PRESETS)} (default cpu-small)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the preset's)")
    parser.add_argument("--backends", default=None, help=f"our backends, comma-separated ({', '.join(OUR_BACKENDS)})")
    parser.add_argument("--models", default=None, help=f"model families, comma-separated ({', '.join(FAMILIES)})")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per model (default: preset's)")
    parser.add_argument(
        "--static-decode",
        default="compile",
        choices=STATIC_DECODE_MODES,
        help="our static-cache decoding row: compiled forward (default), not compiled, or left out",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=CLOCKS,
        help="rank by wall-clock time (default) or, on the CPU, by this process's CPU time (noisy shared machines)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", default=None, help="folder for bench_<preset>.json and .md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
