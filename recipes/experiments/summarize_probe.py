"""The page of recipes/experiments/copy_probe.sh: the copy probe per encoding, from the JSON `alibi-lm eval` wrote.

    python recipes/experiments/summarize_probe.py recipes/results/copy-probe.json runs/probe-models/demo-compare.md \
        recipes/results/copy-probe.md

Every number on the page comes from the JSON (and the probe models' own perplexity table, copied in).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# A model "copies" at a distance when the repeat's loss is at most half the first time's: the repeat is far better
# predicted than the text itself. Past the last such distance, retrieval has stopped.
COPIES = 0.5


def main(probe_json: str, models_page: str, page: str) -> None:
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
    lines += ["| first time | | " + " | ".join(firsts) + " |", "", "Where each model copies (repeat loss at most "
              f"{COPIES:.0%} of the first time's):", ""]  # fmt: skip
    for r in results:
        name = Path(r["model_name"]).name
        base = r["first_loss"][0]
        copies = [span + g for g, loss in zip(r["gaps"], r["repeat_loss"]) if loss <= COPIES * base]
        if not copies:
            lines.append(f"- `{name}`: does not copy at any distance tested (best repeat loss "
                         f"{min(r['repeat_loss']):.2f} against {base:.2f} the first time).")  # fmt: skip
            continue
        beyond = [
            span + g for g, loss in zip(r["gaps"], r["repeat_loss"]) if loss > COPIES * base and span + g > max(copies)
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
    models = Path(models_page)
    if models.exists():
        lines += ["## The probe models", "", models.read_text().split("\n", 1)[1].replace("# ", "### ")]
    Path(page).write_text("\n".join(lines))
    print(f"wrote {page}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
