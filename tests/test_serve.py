"""`transformers serve` runs an exported model: no remote code, an OpenAI-style request, our greedy tokens.

`transformers serve` looks a model's architecture up in transformers itself, so it cannot serve an alibi-lm folder
(remote code); `alibi-lm export --to mpt` makes one it can. The server runs as its own process, as users start it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alibi_lm.cli import main as cli_main
from alibi_lm.hub import prepare_for_hub
from tests.test_export import VOCAB, L, ours, trained
from tests.tiny import word_tokenizer

pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (in the dev extra)")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving] (in the dev extra)")

CHECK = Path(__file__).resolve().parents[1] / "recipes" / "serve" / "check_server.py"
PROMPT = " ".join(f"w{i}" for i in range(1, L // 2 + 1))
NEW_TOKENS = 2 * L  # the reply runs well past the training length


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a local server
        return response.read()


def test_exported_mpt_folder_is_served_by_transformers_serve(tmp_path: Path) -> None:
    executable = shutil.which("transformers")
    assert executable is not None, "transformers' console script is not on PATH"
    model = trained("mpt")
    tokenizer = word_tokenizer(VOCAB)
    prepare_for_hub(model).save_pretrained(tmp_path / "alibi")
    tokenizer.save_pretrained(tmp_path / "alibi")
    assert cli_main(["export", str(tmp_path / "alibi"), str(tmp_path / "mpt"), "--to", "mpt"]) == 0
    # A second model, with random weights: the check must tell it apart.
    other = ours("mpt", seed=5)
    prepare_for_hub(other).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")

    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [executable, "serve", str(tmp_path / "mpt"), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if json.loads(_get(f"http://127.0.0.1:{port}/health")).get("status") == "ok":
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "transformers serve did not come up in 180 s"
            time.sleep(1)
        # recipes/serve/check_server.py is what gpu.sh runs against vLLM and TGI.
        check = [
            sys.executable,
            str(CHECK),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--model",
            str(tmp_path / "mpt"),
        ]
        check += ["--prompt", PROMPT, "--max-tokens", str(NEW_TOKENS)]
        same = subprocess.run([*check, "--reference", str(tmp_path / "alibi")], capture_output=True, text=True)
        different = subprocess.run([*check, "--reference", str(tmp_path / "other")], capture_output=True, text=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert same.returncode == 0, same.stdout + same.stderr[-2000:]
    assert f"{L // 2 + NEW_TOKENS} tokens in all" in same.stdout  # prompt + reply, past the training length L
    assert different.returncode == 1 and "DIFFERENT from character" in different.stdout
