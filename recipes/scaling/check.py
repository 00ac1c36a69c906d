"""Every multi-rank check on the CPU in one run, with the table and plot for the README.

  python recipes/scaling/check.py [--work DIR] [--ranks 2 4] [--results recipes/results]

Runs, each in fresh processes (gloo, one thread per rank):
  1. the shipped FSDP config through `accelerate launch ... -m alibi_lm.train` on 2 CPU ranks: refused (Accelerate
     would run plain DDP there);
  2. fsdp_cpu.py on 1 process (the reference) and on each of --ranks under torchrun: shards, loss curves, final weights;
  3. a kill (SIGKILL after step 6's checkpoint) and a resume on the first of --ranks, against its uninterrupted run;
  4. fine-tuning the reference's saved model with rank-0 loading on the first of --ranks, against 1 process;
  5. tp_cpu.py on each of --ranks: logits and greedy tokens against the single-process model.
Writes `scaling-cpu.json`, `scaling-cpu.md` and `scaling-cpu.png` into --results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks: int, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`script` on one process, or on `ranks` under torchrun."""
    command = [sys.executable, str(HERE / script), *args]
    if ranks > 1:
        command[1:1] = [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(ranks),
            "--master-port",
            str(free_port()),
        ]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def weights_difference(a: Path, b: Path) -> float:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def losses(folder: Path) -> list[float]:
    return json.loads((folder / "losses.json").read_text())["losses"]


def refused_by_train(work: Path) -> str:
    """The shipped fsdp.yaml on 2 CPU ranks through `alibi-lm train`: the error line it stops with."""
    from alibi_lm.data import wikipedia_texts

    (work / "train.txt").write_text("\n".join(wikipedia_texts("train")[:100]))
    recipe = work / "recipe.yaml"
    recipe.write_text(
        f"train_file: {work / 'train.txt'}\noutput_dir: {work / 'accelerate-fsdp'}\nvocab_size: 320\n"
        "hidden_size: 32\nnum_hidden_layers: 2\nnum_attention_heads: 4\nblock_size: 32\nmax_steps: 2\n"
        "do_eval: false\n"
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        "-m", "alibi_lm.train", str(recipe),
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stderr.splitlines() if "FSDP was requested" in line]
    if done.returncode == 0 or not lines or (work / "accelerate-fsdp").exists():
        raise RuntimeError(f"alibi-lm train did not refuse FSDP on CPU ranks:\n{done.stderr[-3000:]}")
    return lines[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--results", type=Path, default=ROOT / "recipes" / "results")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} threads"}
    import accelerate
    import transformers

    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "accelerate": accelerate.__version__}  # fmt: skip

    print("1. the shipped fsdp.yaml on 2 CPU ranks through alibi-lm train", flush=True)
    report["accelerate_fsdp_on_cpu"] = refused_by_train(work)

    print("2. FSDP2 through fully_shard: 1 process, then", args.ranks, "ranks", flush=True)
    launch(1, "fsdp_cpu.py", str(work / "fsdp-1"))
    reference = losses(work / "fsdp-1")
    report["fsdp"] = {"1": {"losses": reference}}
    for ranks in args.ranks:
        folder = work / f"fsdp-{ranks}"
        launch(ranks, "fsdp_cpu.py", str(folder))
        shards = [json.loads((folder / f"shards-rank{r}.json").read_text()) for r in range(ranks)]
        curve = losses(folder)
        report["fsdp"][str(ranks)] = {
            "losses": curve,
            "max_loss_difference": max(abs(a - b) for a, b in zip(curve, reference, strict=True)),
            "local_bytes": [s["local_bytes"] for s in shards],
            "full_bytes": shards[0]["full_bytes"],
            "placements": sorted({p for s in shards for v in s["parameters"].values() for p in v["placements"]}),
            "tied_embeddings": all(s["tied_embeddings"] for s in shards),
            "final_weights_difference": weights_difference(work / "fsdp-1" / "final", folder / "final"),
        }

    first = args.ranks[0]
    print(f"3. kill after step 6 and resume, {first} ranks", flush=True)
    killed = launch(first, "fsdp_cpu.py", str(work / "resume"), "--kill-after", "6", check=False)
    launch(first, "fsdp_cpu.py", str(work / "resume"), "--resume")
    uninterrupted = work / f"fsdp-{first}"
    report["kill_resume"] = {
        "ranks": first,
        "killed_exit_code": killed.returncode,
        "losses_equal": losses(work / "resume") == losses(uninterrupted),
        "final_weights_difference": weights_difference(uninterrupted / "final", work / "resume" / "final"),
    }

    print(f"4. fine-tuning a saved model, rank 0 loading it, {first} ranks against 1", flush=True)
    source = str(work / "fsdp-1" / "final")
    launch(1, "fsdp_cpu.py", str(work / "finetune-1"), "--init-from", source, "--steps", "6")
    launch(first, "fsdp_cpu.py", str(work / "finetune-n"), "--init-from", source, "--steps", "6")
    one, sharded = losses(work / "finetune-1"), losses(work / "finetune-n")
    report["finetune"] = {
        "ranks": first,
        "losses_1": one,
        "losses_n": sharded,
        "max_loss_difference": max(abs(a - b) for a, b in zip(one, sharded, strict=True)),
    }

    print("5. tensor parallel inference on", args.ranks, "ranks", flush=True)
    report["tp"] = {}
    for ranks in args.ranks:
        launch(ranks, "tp_cpu.py", source, "--report", str(work / f"tp-{ranks}.json"))
        report["tp"][str(ranks)] = json.loads((work / f"tp-{ranks}.json").read_text())

    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "scaling-cpu.json").write_text(json.dumps(report, indent=1))
    (args.results / "scaling-cpu.md").write_text(markdown(report, argv))
    plot(report, args.results / "scaling-cpu.png")
    print((args.results / "scaling-cpu.md").read_text())
    if args.work is None:
        shutil.rmtree(work)
    return 0


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(report: dict, argv: list[str] | None) -> str:
    command = " ".join(["python recipes/scaling/check.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Past one device on the CPU: FSDP2 and tensor parallel on gloo ranks",
        "",
        f"Made by `{command.strip()}` on {report['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "The shipped `recipes/accelerate/fsdp.yaml` on 2 CPU ranks through `alibi-lm train` stops with:",
        "",
        f"> {report['accelerate_fsdp_on_cpu'].split('error: ', 1)[-1].split(' (traceback:')[0]}",
        "",
        "## FSDP2 (`fully_shard` per decoder layer, then the root), 12 steps of 8 x 32 tokens",
        "",
        "| ranks | placements | bytes per rank / full | tied embedding | max loss difference vs 1 process | final weights max difference |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for ranks, run in report["fsdp"].items():
        if ranks == "1":
            continue
        share = ", ".join(f"{b / run['full_bytes']:.3f}" for b in run["local_bytes"])
        lines.append(
            f"| {ranks} | {', '.join(run['placements'])} | {share} | {run['tied_embeddings']} | "
            f"{run['max_loss_difference']:.1e} | {run['final_weights_difference']:.1e} |"
        )
    resume, tune = report["kill_resume"], report["finetune"]
    lines += [
        "",
        "Loss per step (the mean over the global batch):",
        "",
        "| step | " + " | ".join(f"{r} rank{'s' if r != '1' else ''}" for r in report["fsdp"]) + " |",
        "|---" * (len(report["fsdp"]) + 1) + "|",
    ]
    for step in range(len(report["fsdp"]["1"]["losses"])):
        lines.append(
            f"| {step + 1} | " + " | ".join(f"{r['losses'][step]:.6f}" for r in report["fsdp"].values()) + " |"
        )
    lines += [
        "",
        f"**Kill and resume ({resume['ranks']} ranks):** SIGKILL after step 6's sharded checkpoint (exit code {resume['killed_exit_code']}),"
        f" resumed to step 12: losses identical to the uninterrupted run: {resume['losses_equal']}; final weights max "
        f"difference {resume['final_weights_difference']:.1e}.",
        "",
        f"**Fine-tuning a saved model with rank-0 loading ({tune['ranks']} ranks) against 1 process:** max loss difference "
        f"{tune['max_loss_difference']:.1e} over {len(tune['losses_1'])} steps.",
        "",
        "## Tensor parallel (`tp_plan=\"auto\"`), a left-padded batch at 3x the training length, greedy with the cache",
        "",
        "| ranks | backend | heads per rank (first, count) | max fp32 logit difference | greedy tokens (train_length) | identical |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for ranks, rows in report["tp"].items():
        for row in rows:
            lines.append(
                f"| {ranks} | {row['backend']} | {row['heads_per_rank']} | {row['logits_max_difference']:.1e} | "
                f"{row['generated_length']} ({row['train_length']}) | {row['same_tokens']} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (curves, gaps) = plt.subplots(1, 2, figsize=(10, 3.8))
    reference = report["fsdp"]["1"]["losses"]
    steps = range(1, len(reference) + 1)
    for ranks, run in report["fsdp"].items():
        label = "1 process" if ranks == "1" else f"FSDP2, {ranks} ranks"
        curves.plot(steps, run["losses"], marker="o" if ranks == "1" else None, label=label)
        if ranks != "1":
            gaps.plot(steps, [max(abs(a - b), 1e-9) for a, b in zip(run["losses"], reference)], label=label)
    curves.set(xlabel="step", ylabel="training loss", title="Loss per step, same global batch")
    gaps.set(
        xlabel="step",
        ylabel="|loss - 1-process loss| (0 drawn at 1e-9)",
        yscale="log",
        title="Difference from 1 process",
    )
    curves.legend()
    gaps.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
