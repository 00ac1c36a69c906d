"""What `alibi-lm bench` makes of its measurements: result rows, ratios against the references, the targets'
verdicts, and the Markdown report. Pure functions of the rows; nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bench_presets import Target


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
    vs_dense: float | None = None  # windowed ALiBi over dense ALiBi on the same backend
    mem_vs_bloom: float | None = None  # peak-memory ratio
    mem_vs_falcon: float | None = None
    mem_vs_no_bias: float | None = None
    mem_vs_dense: float | None = None
    vs_dynamic: float | None = None  # static-cache decoding over the dynamic cache
    same_tokens: bool | None = None


def add_ratios(rows: list[Row]) -> None:
    """Fill the speed and memory ratios of each row against Bloom, the fastest Falcon, and our no-bias model.

    The no-bias reference of a row is our `position_encoding="none"` model on the same backend (and cache); the
    dense reference of a windowed-ALiBi row is our dense ALiBi model on the same backend.
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

            def twin(family: str, row: Row = row, group: list[Row] = group) -> Row | None:
                return next(
                    (
                        r
                        for r in group
                        if r.family == family and r.backend == row.backend and r.cache == row.cache and ok(r)
                    ),
                    None,
                )

            dense = twin("alibi") if row.family == "windowed" else None
            for name, ref in (("bloom", bloom), ("falcon", falcon), ("no_bias", twin("none")), ("dense", dense)):
                if ref is None or (name == "no_bias" and row.family not in ("alibi", "windowed", "none")):
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
    """Evaluate each target on the best of its family's rows (fastest for speed, smallest for memory)."""
    results = []
    for target in targets:
        candidates = [
            r for r in rows if r.family == target.family and r.error is None and r.measurement == target.measurement
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
            header = "| model | backend | cache | ms/token | tokens/s | ×Bloom | ×Falcon-alibi | ×no-bias | ×dense | ×dynamic | same tokens |"
        else:
            title = (
                f"Training step (forward + backward), {rows[0]['batch']} × {rows[0]['length']} tokens"
                if kind == "train"
                else f"Prefill of {rows[0]['length']} tokens (no grad, no KV cache, last-position logits)"
            )
            header = "| model | backend | ms | tokens/s | peak MiB | ×Bloom | ×Falcon-alibi | ×no-bias | ×dense | mem/Bloom | mem/Falcon-alibi | mem/no-bias |"
        lines += ["", f"## {title}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for r in rows:
            if r["error"] is not None:
                cells = [r["label"], r["backend"]] + ([r["cache"]] if kind == "decode" else []) + [r["error"]]
                lines.append("| " + " | ".join(cells) + " |")
                continue
            speed = [_fmt(r.get(k), ".2f", "×") for k in ("vs_bloom", "vs_falcon", "vs_no_bias", "vs_dense")]
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


__all__ = ["Row", "add_ratios", "check_targets", "to_markdown"]
