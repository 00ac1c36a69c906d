"""`alibi-lm bench`: the tiny preset end to end, the ratios, the memory meter, recompile counting, the static cache."""

from __future__ import annotations

import json

import pytest
import torch

from alibi_lm import bench, measure
from alibi_lm.cli import main
from tests.tiny import cli_error, random_ids, tiny_model

TINY_ROWS = {
    "train 1x64": {(f, b, None) for f in ("alibi", "none") for b in ("eager", "sdpa")}
    | {("bloom", "eager", None), ("mpt", "eager", None), ("falcon", "eager", None), ("falcon", "sdpa", None)},
    "prefill 128": {(f, b, None) for f in ("alibi", "none") for b in ("eager", "sdpa")}
    | {("bloom", "eager", None), ("mpt", "eager", None), ("falcon", "eager", None), ("falcon", "sdpa", None)},
    "decode": {(f, b, "dynamic") for f in ("alibi", "none") for b in ("eager", "sdpa")}
    | {("bloom", "eager", "dynamic"), ("mpt", "eager", "dynamic"), ("falcon", "eager", "dynamic")}
    | {("falcon", "sdpa", "dynamic"), ("alibi", "sdpa", "static")},
}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    # One thread: on a loaded machine, two OpenMP threads spin-wait for each other and triple the time.
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--static-decode", "eager", "--repeats", "2"]
    argv += ["--threads", "1", "--clock", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0  # with progress: off a terminal, a line per 5%
    return json.loads((out / "bench_tiny.json").read_text()), (out / "bench_tiny.md").read_text()


def _rows(report: dict, measurement: str) -> list[dict]:
    return [r for r in report["rows"] if r["measurement"] == measurement]


def test_tiny_preset_measures_every_model_on_every_measurement(tiny_report):
    report, _ = tiny_report
    for measurement, expected in TINY_ROWS.items():
        assert {(r["family"], r["backend"], r["cache"]) for r in _rows(report, measurement)} == expected


def test_tiny_preset_rows_have_medians_and_peaks(tiny_report):
    report, _ = tiny_report
    for row in report["rows"]:
        if row["cache"] == "static":
            continue  # its correctness is test_static_cache_generates_the_same_tokens_as_dynamic
        assert row["error"] is None, row
        assert len(row["times_s"]) == 2 and row["seconds"] == pytest.approx(sum(row["cpu_times_s"]) / 2)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
        if row["kind"] != "decode":
            assert row["peak_bytes"] > row["weight_bytes"] > 0  # every call allocates activations


def test_tiny_preset_ratios_use_bloom_the_fastest_falcon_and_the_same_kernel_without_bias(tiny_report):
    report, _ = tiny_report
    for measurement in TINY_ROWS:
        rows = [r for r in _rows(report, measurement) if r["cache"] in (None, "dynamic")]
        bloom = next(r for r in rows if r["family"] == "bloom")
        falcon = max((r for r in rows if r["family"] == "falcon"), key=lambda r: r["tokens_per_s"])
        for row in rows:
            assert row["vs_bloom"] == pytest.approx(row["tokens_per_s"] / bloom["tokens_per_s"])
            assert row["vs_falcon"] == pytest.approx(row["tokens_per_s"] / falcon["tokens_per_s"])
            if row["family"] in ("alibi", "none"):
                twin = next(r for r in rows if r["family"] == "none" and r["backend"] == row["backend"])
                assert row["vs_no_bias"] == pytest.approx(row["tokens_per_s"] / twin["tokens_per_s"])
            else:
                assert row["vs_no_bias"] is None
            if row["kind"] != "decode":
                assert row["mem_vs_bloom"] == pytest.approx(row["peak_bytes"] / bloom["peak_bytes"])


def test_tiny_preset_markdown_has_a_table_per_measurement(tiny_report):
    report, markdown = tiny_report
    assert "## Training step (forward + backward), 1 × 64 tokens" in markdown
    assert "## Prefill of 128 tokens" in markdown
    assert "## Decoding: batch 1, 16-token prompt, 8 new tokens, greedy" in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_lines) == 3 + len(report["rows"])  # a header per table, then a line per row
    assert "recompile-limit hits" in markdown


def test_peak_memory_on_cpu_is_the_peak_of_live_tensor_bytes():
    kept = torch.empty(5_000_000, dtype=torch.uint8)  # live before the call: not counted

    def allocate() -> torch.Tensor:
        a = torch.empty(4_000_000, dtype=torch.uint8)
        b = torch.empty(8_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(2_000_000, dtype=torch.uint8)  # 8 + 2 < 4 + 8: the peak was before
        return b, c

    assert measure.peak_memory(allocate, torch.device("cpu")) == 12_000_000
    del kept


def test_run_interleaved_alternates_models_and_records_failures():
    calls_seen = []

    def fails() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    calls = {"a": lambda: calls_seen.append("a"), "b": lambda: calls_seen.append("b"), "oom": fails}
    results = measure.run_interleaved(calls, torch.device("cpu"), repeats=3, warmup=1, measure_memory=False)
    assert calls_seen == ["a", "b"] + ["a", "b"] * 3  # warm-up, then A B A B A B
    assert results["oom"].error == "out of memory" and results["oom"].times == []
    assert len(results["a"].times) == 3 and results["a"].error is None


def test_run_interleaved_counts_recompiles_while_timing():
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    sizes = iter(range(1, 100))
    calls = {"new shape each call": lambda: compiled(torch.ones(next(sizes)))}
    results = measure.run_interleaved(calls, torch.device("cpu"), repeats=2, warmup=1, measure_memory=False)
    assert results["new shape each call"].recompiles == 2


def _row(family: str, backend: str, tokens_per_s: float, peak: int, measurement: str = "train 1x8") -> bench.Row:
    return bench.Row(
        measurement=measurement,
        kind="train",
        family=family,
        label=bench.LABELS[family],
        backend=backend,
        batch=1,
        length=8,
        tokens=8,
        tokens_per_s=tokens_per_s,
        peak_bytes=peak,
    )


def test_write_results_writes_the_title_how_it_was_made_and_the_table(tmp_path, capsys):
    import transformers

    out = tmp_path / "deep" / "result.md"
    rows = ["| a | 1 | 2 |", "| b | 3 | 4 |"]
    text = measure.write_results(out, "Title", "python x.py --out r.md", "Seconds.", "| name | x | y |", rows)
    lines = out.read_text().splitlines()
    assert out.read_text() == text and capsys.readouterr().out == text
    assert lines[:2] == ["# Title", ""] and lines[3:] == ["", "| name | x | y |", "|---|---|---|", *rows]
    made = lines[2]
    assert made.startswith("`python x.py --out r.md`; ")
    assert f"torch {torch.__version__}, transformers {transformers.__version__}; " in made
    assert made.endswith(". Seconds.") and "cores" in made  # the machine (`machine.describe`) is named


def test_add_ratios_and_targets_on_known_numbers():
    rows = [
        _row("alibi", "sdpa", 200.0, 100),
        _row("alibi", "eager", 50.0, 300),
        _row("none", "sdpa", 250.0, 90),
        _row("none", "eager", 40.0, 280),
        _row("bloom", "eager", 100.0, 400),
        _row("falcon", "eager", 80.0, 350),
        _row("falcon", "sdpa", 160.0, 200),
    ]
    bench.add_ratios(rows)
    ours = rows[0]
    assert (ours.vs_bloom, ours.vs_falcon, ours.vs_no_bias) == (2.0, 1.25, 0.8)  # Falcon ref: its fastest
    assert (ours.mem_vs_bloom, ours.mem_vs_falcon) == (0.25, 0.5)
    assert rows[1].vs_no_bias == 50.0 / 40.0  # eager against eager
    targets = (
        bench.Target("train 1x8", "speed", "bloom", ">=", 1.8),
        bench.Target("train 1x8", "speed", "no_bias", ">=", 0.95),
        bench.Target("train 1x8", "memory", None, "<=", 150),
    )
    results = bench.check_targets(rows, targets)
    assert [t["passed"] for t in results] == [True, False, True]
    assert results[0]["row"] == "alibi-lm [sdpa]" and results[2]["value"] == 100


@pytest.mark.parametrize("name", bench.PRESETS)
def test_every_target_names_a_measurement_of_its_preset(name):
    preset = bench.get_preset(name)
    measurements = {step["measurement"] for step in bench.measurement_plan(preset)}
    assert {t.measurement for t in preset.targets} <= measurements


def test_the_cpu_demo_preset_is_the_model_and_batch_the_demo_trains():
    from alibi_lm.bench_presets import PRESETS
    from alibi_lm.demo_settings import DemoSettings

    preset, demo = PRESETS["cpu-demo"], DemoSettings()
    assert (preset.hidden_size, preset.num_layers, preset.num_heads, preset.vocab_size) == (
        demo.hidden_size, demo.num_hidden_layers, demo.num_attention_heads, demo.vocab_size
    )  # fmt: skip
    assert preset.train_shapes == ((demo.batch_size, demo.block_size),)


def test_unknown_preset_is_a_clear_error(capsys):
    with pytest.raises(
        ValueError, match="Unknown bench preset 'huge'; choose one of tiny, cpu-small, cpu-demo, cpu-long, gpu-350m"
    ):
        bench.get_preset("huge")
    assert "Unknown bench preset 'huge'" in cli_error(["bench", "--preset", "huge"], capsys)


def test_unknown_backend_model_or_clock_is_a_clear_error(capsys):
    assert "Unknown backend ['flash']" in cli_error(["bench", "--preset", "tiny", "--backends", "sdpa,flash"], capsys)
    assert "Unknown model ['gpt2']" in cli_error(["bench", "--preset", "tiny", "--models", "gpt2"], capsys)
    with pytest.raises(ValueError, match="clock must be one of"):
        bench.run_bench(bench.get_preset("tiny"), torch.device("cpu"), clock="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_gpu_preset_without_cuda_is_a_clear_error(capsys):
    assert "asks for CUDA but none is available" in cli_error(["bench", "--preset", "gpu-350m"], capsys)


def test_generate_tokens_makes_exactly_the_new_tokens_asked_for():
    model = tiny_model()
    ids = random_ids(1, 6)
    first = measure.generate_tokens(model, ids, 1)[0, -1].item()
    model.generation_config.eos_token_id = first  # would stop after one token without min_new_tokens
    assert measure.generate_tokens(model, ids, 5).shape == (1, 11)


def test_static_cache_generates_the_same_tokens_as_dynamic():
    model = tiny_model()
    ids = random_ids(1, 6)
    dynamic = measure.generate_tokens(model, ids, 10)
    static = measure.generate_tokens(model, ids, 10, cache="static")
    assert torch.equal(static, dynamic)


@pytest.mark.slow
def test_static_cache_with_compiled_forward_generates_the_same_tokens_as_dynamic():
    model = tiny_model()
    ids = random_ids(1, 6)
    dynamic = measure.generate_tokens(model, ids, 10)
    static = measure.generate_tokens(model, ids, 10, cache="static", compiled=True)
    assert torch.equal(static, dynamic)
