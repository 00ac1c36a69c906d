"""The data path with and without `streaming: true`: time to the first block, blocks per second, memory and disk.

    python recipes/experiments/streaming_data.py --megabytes 200 [--out recipes/results/streaming-data.md]

Writes a JSON-lines file of that many MB of offline Wikipedia summaries (one per line, shuffled repeats) and trains
an 8,192-token BPE on its first 20 MB. Each path then runs in a fresh process, so each peak resident memory is its own:
- map (`streaming: false`, the default): `build_lm_datasets` loads the file into datasets' Arrow cache, tokenizes and
  groups every block into cache files; training starts once all of that is done;
- stream (`streaming: true`): `build_lm_datasets` returns the blocks lazily; the script reads every training block,
  as training would, through the shuffle buffer (the default, 1,000 blocks);
- stream, N workers: the same, read in N DataLoader worker processes, as with `dataloader_num_workers: N`: the
  stream has a shard per worker, each tokenizing every N-th document (tokenizers turns its thread pool off in a
  forked process once the parent has used it, so each worker tokenizes on one thread).
All cut blocks of 512 tokens and read the training blocks as Trainer does, in batches of 8 through
`default_data_collator`. "first block" is the time from the start until the first batch is in hand. Peak memory is
the training process's resident peak, and with workers, the largest worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = "--child"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


MODES = {"map": 0, "stream": 0, "stream, 1 worker": 1, "stream, 2 workers": 2}  # path: DataLoader workers


def child(mode: str, folder: Path) -> dict:
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, default_data_collator

    from alibi_lm.blocks import build_lm_datasets
    from alibi_lm.data import DataArguments

    cache = folder / f"cache-{mode}"  # datasets' Arrow copy of the file, the tokens and the blocks (map)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    data_args = DataArguments(
        train_file=str(folder / "corpus.jsonl"),
        cache_dir=str(cache),
        streaming=mode != "map",
        validation_documents=500,
        validation_split_percentage=1,
    )
    workers = MODES[mode]
    blocks = build_lm_datasets(data_args, tokenizer, 512, shards=max(1, workers))  # as `alibi-lm train` does
    # As Trainer reads it: batches of 8 through `default_data_collator`, in this process or in worker processes
    # (`dataloader_num_workers`).
    loader = DataLoader(blocks["train"], batch_size=8, collate_fn=default_data_collator, num_workers=workers)
    batches = iter(loader)
    count = len(next(batches)["input_ids"])
    first = time.perf_counter() - start
    count += sum(len(batch["input_ids"]) for batch in batches)
    total = time.perf_counter() - start
    return {
        "mode": mode,
        "first_block_s": first,
        "total_s": total,
        "blocks": count,
        "tokens_per_s": count * 512 / total,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024 if workers else None,
        "cache_mib": folder_bytes(cache) / 2**20 if cache.exists() else 0.0,
    }


def write_corpus(folder: Path, megabytes: int) -> None:
    from datasets import Dataset

    from alibi_lm.blocks import train_bpe_tokenizer
    from alibi_lm.data import wikipedia_texts

    texts, rng = list(wikipedia_texts("train")), random.Random(0)
    sample: list[str] = []
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 2**20:
            rng.shuffle(texts)
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")
                if f.tell() < 20 * 2**20:
                    sample.append(text)
                if f.tell() >= megabytes * 2**20:
                    break
    train_bpe_tokenizer(Dataset.from_dict({"text": sample}), 8192).save_pretrained(folder / "tokenizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the table here as Markdown")
    parser.add_argument(CHILD, nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_corpus(folder, args.megabytes)
        size = (folder / "corpus.jsonl").stat().st_size / 2**20
        rows = []
        for mode in MODES:
            env = {**os.environ, "HF_DATASETS_CACHE": str(folder / "hf-cache")}
            done = subprocess.run(
                [sys.executable, __file__, CHILD, mode, str(folder)], env=env, capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import datasets
    import tokenizers

    from alibi_lm.machine import describe

    lines = [
        f"{size:.0f} MiB of JSON lines, blocks of 512 tokens, an 8,192-token BPE "
        f"(`python recipes/experiments/streaming_data.py --megabytes {args.megabytes}`).",
        f"Machine: {describe()}; datasets {datasets.__version__}, tokenizers {tokenizers.__version__}.",
        "",
        "| path | first block | all blocks | training blocks | tokens/s | peak memory | largest worker | disk written |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        worker = f"{row['worker_peak_mib']:,} MiB" if row["worker_peak_mib"] else "–"
        lines.append(
            f"| {row['mode']} | {row['first_block_s']:.1f} s | {row['total_s']:.0f} s | {row['blocks']:,} | "
            f"{row['tokens_per_s']:,.0f} | {row['peak_mib']:,} MiB | {worker} | {row['cache_mib']:,.0f} MiB |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
