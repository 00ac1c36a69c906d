"""`transformers serve` runs an exported model: no remote code, an OpenAI-style request, our greedy tokens.

`transformers serve` looks a model's architecture up in transformers itself, so it cannot serve an alibi-lm folder
(remote code); `alibi-lm export --to mpt` makes one it can. The server runs as its own process, as users start it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from alibi_lm.cli import main as cli_main
from alibi_lm.hub import prepare_for_hub
from tests.test_export import VOCAB, L, trained
from tests.tiny import word_tokenizer

pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (in the dev extra)")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving] (in the dev extra)")

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

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    expected_text = tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)

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
        body = json.dumps(
            {"model": str(tmp_path / "mpt"), "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - a local server
            reply = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert reply["usage"]["completion_tokens"] == NEW_TOKENS
    assert reply["usage"]["prompt_tokens"] + NEW_TOKENS > L
    assert reply["choices"][0]["text"] == expected_text
