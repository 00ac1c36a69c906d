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
import functools
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    MptConfig,
    MptForCausalLM,
    PreTrainedModel,
)

from . import machine
from .bench_presets import PRESETS, Preset, Target, get_preset, max_length, measurement_plan
from .bench_report import Row, add_ratios, check_targets, to_markdown
from .measure import (
    Measured,
    compiled_graphs,
    generate_tokens,
    prefill,
    recompile_limit_hits,
    release,
    run_interleaved,
    train_step,
)
from .modeling.alibi_masks import ALIBI_TRITON
from .modeling.configuration_alibi import AlibiConfig
from .modeling.modeling_alibi import AlibiForCausalLM
from .progress import progress_bar

OUR_BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2", ALIBI_TRITON)
# What transformers 5.24 lets each baseline build: Bloom and MPT raise for sdpa and flex_attention, Falcon
# raises for flex_attention, and Falcon's flash_attention_2 raises "`alibi` is not supported".
BASELINE_BACKENDS = {"bloom": ("eager",), "mpt": ("eager",), "falcon": ("eager", "sdpa")}
OURS = ("alibi", "windowed", "none")
FAMILIES = (*OURS, *BASELINE_BACKENDS)
# What a preset runs unless it names its own families: windowed ALiBi only pays off at long lengths (cpu-long).
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f != "windowed")
LABELS = {
    "alibi": "alibi-lm",
    "windowed": "alibi-lm, windowed",
    "none": "alibi-lm, no bias",
    "bloom": "Bloom",
    "mpt": "MPT",
    "falcon": "Falcon-alibi",
}
STATIC_DECODE_MODES = ("compile", "eager", "off")
CLOCKS = ("wall", "cpu")


def build_model(family: str, backend: str, preset: Preset, device: torch.device) -> PreTrainedModel:
    """One model of `family` at the preset's size, seeded, on `device` in the preset's dtype."""
    h, layers, heads, vocab = preset.hidden_size, preset.num_layers, preset.num_heads, preset.vocab_size
    if family in OURS:
        train_length = max((length for _, length in preset.train_shapes), default=512)
        config = AlibiConfig(
            vocab_size=vocab,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * h,
            train_length=train_length,
            position_encoding="none" if family == "none" else "alibi",
            alibi_window_cutoff=preset.window_cutoff if family == "windowed" else None,
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
        if backend in ("flex_attention", ALIBI_TRITON) and kind == "decode":
            continue  # flex and the Triton kernel decode single tokens with sdpa: the row would repeat sdpa's
        if backend == ALIBI_TRITON and not (device.type == "cuda" and importlib.util.find_spec("triton")):
            continue  # a CUDA kernel (on the CPU it runs only in Triton's interpreter)
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


def run_bench(
    preset: Preset,
    device: torch.device,
    families: tuple[str, ...] = DEFAULT_FAMILIES,
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
    graphs_at_start, limit_hits_at_start = compiled_graphs(), recompile_limit_hits()
    rows: list[Row] = []

    def report() -> dict[str, Any]:
        add_ratios(rows)
        compiles = {
            "graphs_compiled": compiled_graphs() - graphs_at_start,
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
        return {k: s for k, s in subjects.items() if s.family not in OURS or s.backend in ours}

    plan = measurement_plan(preset)
    total = sum(len(chosen(step["kind"])) * (1 + preset.repeats) for step in plan)
    progress = progress_bar(total=total, desc="bench", disable=not show_progress)
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
        release(device)
        if on_measurement is not None:
            on_measurement(report())
    progress.close()
    return report()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so that a table says where its numbers come from."""
    return {
        "device": str(device),
        "device_name": machine.describe(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
    families = _parse_list(args.models, FAMILIES, "model") or preset.families or DEFAULT_FAMILIES
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


# Re-exported: the presets and the report are part of `alibi_lm.bench`'s interface.
__all__ = [
    "FAMILIES",
    "LABELS",
    "PRESETS",
    "Preset",
    "Row",
    "Target",
    "add_ratios",
    "build_model",
    "check_targets",
    "get_preset",
    "max_length",
    "measurement_plan",
    "run_bench",
    "to_markdown",
]
