"""The page of recipes/experiments/copy_probe.sh: the copy probe per encoding, from the JSON `alibi-lm eval` wrote.

    python recipes/experiments/summarize_probe.py recipes/results/copy-probe.json runs/copiers recipes/results/copy-probe.md

Every number on the page comes from the probe's JSON and, in the copiers' folder, `perplexity.json` (`alibi-lm eval
--json`) and each copier's `copier.json` (its training log).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# A model "copies" at a distance when the repeat's loss is at least half a nat below the first time's: the repeated
# tokens are 1.65x as likely as when the model first saw them. Past the last such distance, retrieval has stopped.
COPIES = 0.5


def main(probe_json: str, copiers: str, page: str) -> None:
    data = json.loads(Path(probe_json).read_text())
    results = data["probe"]
    reach = data.get("alibi_reach_1pct", {})
    first = results[0]
    span, train = first["span"], first["training_length"]
    distances = [span + g for g in first["gaps"]]
    lines = [
        "# How far back can a model copy? The copy probe on the five encodings",
        "",
        "Made by:",
        "",
        "```bash",
        "bash recipes/experiments/copy_probe.sh",
        "```",
        "",
        f"Each sample: a span A of {span} held-out tokens, then a gap of held-out text, then A again "
        f"({first['samples']} samples per gap). The table gives the mean loss (nats) on A's tokens after the gap, "
        "against the loss on the same tokens the first time (the same for every gap, last row), and the top-1 "
        f"accuracy on the repeat. Distance = span + gap: how far back the first copy of a token lies. L = {train}.",
        "",
        "| distance back | x L | " + " | ".join(f"`{Path(r['model_name']).name}`" for r in results) + " |",
        "|---:|---:|" + "---:|" * len(results),
    ]
    for i, d in enumerate(distances):
        cells = [f"{r['repeat_loss'][i]:.2f} ({r['repeat_accuracy'][i]:.0%})" for r in results]
        lines.append(f"| {d} | {d / train:g} | " + " | ".join(cells) + " |")
    firsts = [f"{sum(r['first_loss']) / len(r['first_loss']):.2f} ({r['first_accuracy'][0]:.0%})" for r in results]
    lines += ["| first time | | " + " | ".join(firsts) + " |", "", "Where each model copies (repeat loss at least "
              f"{COPIES:g} nats below the first time's):", ""]  # fmt: skip
    for r in results:
        name = Path(r["model_name"]).name
        base = r["first_loss"][0]
        copies = [span + g for g, loss in zip(r["gaps"], r["repeat_loss"]) if loss <= base - COPIES]
        if not copies:
            lines.append(f"- `{name}`: does not copy at any distance tested (best repeat loss "
                         f"{min(r['repeat_loss']):.2f} against {base:.2f} the first time).")  # fmt: skip
            continue
        beyond = [
            span + g for g, loss in zip(r["gaps"], r["repeat_loss"]) if loss > base - COPIES and span + g > max(copies)
        ]
        lines.append(
            f"- `{name}`: copies from {min(copies)} to {max(copies)} tokens back ({max(copies) / train:g}x L)"
            + (f"; not at {beyond[0]} and beyond." if beyond else "; at every distance tested.")
        )
    if reach:
        for name, distances_1pct in reach.items():
            lines += ["", f"ALiBi's bias alone leaves 1% of a head's weight at these distances (`{name}`, heads 1 to "
                      f"{len(distances_1pct)}, steepest slope first): {distances_1pct}."]  # fmt: skip
    lines += ["", "![copy probe](copy-probe.png)", ""]
    folder = Path(copiers)
    perplexity = json.loads((folder / "perplexity.json").read_text())
    lengths = [x["length"] for x in perplexity[0]["lengths"]]
    lines += [
        "## The copiers",
        "",
        "Each model: a fresh model with the demo comparison's configuration and tokenizer (2 layers, hidden 128, 8 "
        "heads, L = 64, BPE 2,048), trained by `recipes/experiments/train_copier.py` on the demo's text plus "
        "synthetic blocks scored only on a repeated span of random tokens (L/4 to 3L/4 back). Copy top-1 on the "
        "last training batch's copies, and perplexity on the held-out text (non-overlapping):",
        "",
        "| model | steps | copy top-1 >= 50% from step | copy top-1 (last step) | "
        + " | ".join(f"ppl at {n}" for n in lengths)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(lengths),
    ]
    for row in perplexity:
        log = json.loads((Path(row["model_name"]) / "copier.json").read_text())["log"]
        learned = next((entry["step"] for entry in log if entry["copy_accuracy"] >= 0.5), "never")
        cells = [f"{x['ppl']:.2f}" for x in row["lengths"]]
        lines.append(f"| `{Path(row['model_name']).name}` | {log[-1]['step']} | {learned} | "
                     f"{log[-1]['copy_accuracy']:.0%} | " + " | ".join(cells) + " |")  # fmt: skip
    lines.append("")
    Path(page).write_text("\n".join(lines))
    print(f"wrote {page}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
