"""Peak memory of the data path (load, BPE training, tokenizing, blocks) on one huge single-line text file.

    python recipes/experiments/big_input_memory.py --megabytes 200 [--no-pieces]

Writes a single-line file of that many MB of offline Wikipedia text (summaries joined by spaces) into a temporary
folder and runs `alibi_lm.train`'s data steps on it in this process, printing the peak resident memory after each
step (ru_maxrss). `--no-pieces` hands `tokenizers` the whole text at once, as before issue 26 (TEXT_PIECE_CHARS).
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

from alibi_lm import blocks as token_blocks
from alibi_lm import data


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--no-pieces", action="store_true", help="no 1 MiB pieces (the behaviour before issue 26)")
    args = parser.parse_args()
    if args.no_pieces:
        token_blocks.TEXT_PIECE_CHARS = 10**15
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "one-line.txt"
        texts, rng = list(data.wikipedia_texts("train")), random.Random(0)
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < args.megabytes * 2**20:
                rng.shuffle(texts)
                f.write(" ".join(text.replace("\n", " ") for text in texts) + " ")
        print(f"{path.stat().st_size / 2**20:.0f} MiB on one line; peak RSS {peak_mib()} MiB after writing it")
        validation = Path(folder) / "validation.txt"
        validation.write_text("\n".join(data.wikipedia_texts("validation")[:50]), encoding="utf-8")
        data_args = data.DataArguments(
            train_file=str(path), validation_file=str(validation), cache_dir=str(Path(folder) / "cache")
        )
        start = time.perf_counter()
        raw = data.load_raw_datasets(data_args)  # the runner's path: datasets' text builder, one line a document
        print(f"loaded: peak {peak_mib()} MiB, {time.perf_counter() - start:.0f} s")
        tokenizer = token_blocks.cached_bpe_tokenizer(raw["train"], 8192, Path(folder) / "cache")
        print(f"BPE trained: peak {peak_mib()} MiB, {time.perf_counter() - start:.0f} s")
        blocks = token_blocks.tokenize_and_group(raw, tokenizer, block_size=512, cache_dir=Path(folder) / "cache")
        print(
            f"tokenized and grouped ({len(blocks['train'])} blocks): peak {peak_mib()} MiB, "
            f"{time.perf_counter() - start:.0f} s"
        )


if __name__ == "__main__":
    main()
