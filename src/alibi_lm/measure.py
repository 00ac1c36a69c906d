"""Measuring one model step fairly: interleaved repetitions, peak memory, synchronised clocks, quiet compiles.

`run_interleaved` times several subjects in turn (one step of each, repeated), so that a noisy shared machine slows
them alike and their ratios hold; `peak_memory` reads the allocator's peak on a GPU and the resident set's on the
CPU. `alibi-lm bench` and the demo's efficiency comparison (`alibi_lm.efficiency`) both measure with these.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.autograd import DeviceType
from transformers import (
    CompileConfig,
    PreTrainedModel,
)

from .machine import describe


@dataclass
class Measured:
    """What the interleaved runner saw for one call site."""

    times: list[float] = field(default_factory=list)  # wall clock
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU time, all threads
    peak_bytes: int | None = None  # above what was live when the call started
    recompiles: int = 0  # graphs compiled while the repetitions were timed
    error: str | None = None
    output: Any = None  # the last warm-up call's return value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_graphs() -> int:
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
    progress: Any = None,
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
            release(device)  # the failed call's tensors die with its frames
        if progress is not None:
            progress.update()
    for _ in range(repeats):
        for key, fn in calls.items():
            if results[key].error is not None:
                continue
            graphs = compiled_graphs()
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            results[key].times.append(time.perf_counter() - start)
            results[key].cpu_times.append(time.process_time() - cpu_start)
            results[key].recompiles += compiled_graphs() - graphs
            if progress is not None:
                progress.update()
    return results


def release(device: torch.device) -> None:
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
            # No public switch exists (transformers 5.24 `_valid_auto_compile_criteria` reads only this private
            # flag besides the device type); transformers' own generation tests set it the same way.
            config._compile_all_devices = True
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
    # An explicit all-ones mask: without one, generate reads every random prompt token equal to pad_token_id (0) as
    # padding, and the prompt then takes the padded-batch path (a [B, H, Q, K] mask) instead of the unpadded one.
    with torch.inference_mode():
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)


def write_results(out: Path, title: str, command: str, note: str, header: str, rows: Iterable[str]) -> str:
    """Write an experiment's markdown results to `out` (and print them): `# title`, the `command` that made them with
    this machine, torch, transformers and the date, then `note`, and the table (`header` `| a | b |`, then `rows`).
    Returns the text."""
    made = f"`{command}`; {describe()}; torch {torch.__version__}, transformers {transformers.__version__}; "
    made += f"{time.strftime('%Y-%m-%d')}." + (f" {note}" if note else "")
    separator = "|" + "---|" * (header.count("|") - 1)
    text = "\n".join([f"# {title}", "", made, "", header, separator, *rows]) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
    return text
