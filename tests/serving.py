"""Run `transformers serve` on a folder as its own process, as users start it, for the tests that query it."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHECK = Path(__file__).resolve().parents[1] / "recipes" / "serve" / "check_server.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a local server
        return response.read()


@contextlib.contextmanager
def transformers_serve(folder: Path, log_path: Path, startup_s: float = 180) -> Iterator[str]:
    """Serve `folder` with `transformers serve` on a free local port; yield its base URL; stop it on exit."""
    executable = shutil.which("transformers")
    assert executable is not None, "transformers' console script is not on PATH"
    port = _free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [executable, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_s
            while True:
                try:
                    if json.loads(_get(f"http://127.0.0.1:{port}/health")).get("status") == "ok":
                        break
                except OSError:
                    pass
                assert server.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"transformers serve did not come up in {startup_s:.0f} s"
                time.sleep(1)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=30)


def check_server(endpoint: str, model: Path, reference: Path, prompt: str, max_tokens: int):
    """Run recipes/serve/check_server.py (what gpu.sh runs against vLLM and TGI); return the finished process."""
    command = [
        sys.executable,
        str(CHECK),
        "--endpoint",
        endpoint,
        "--model",
        str(model),
        "--reference",
        str(reference),
    ]
    command += ["--prompt", prompt, "--max-tokens", str(max_tokens)]
    return subprocess.run(command, capture_output=True, text=True)
