"""One run per folder (issue 26, point 3): a second run into a folder that a run is training into refuses at once.

Without a lock, two runs into one folder crashed one of them with an unrelated message (a missing
`tokenizer_config.json`, a `.tmp-checkpoints` path, `Expecting value`) and left checkpoints of one run and the final
model of the other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alibi_lm.checkpoints import OutputDirLockedError, lock_path, run_lock
from alibi_lm.train import parse_recipe, train
from tests.test_train import tiny_recipe, workdir  # noqa: F401 - the module's text files, a pytest fixture

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) by relative path, with its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def start(code: str) -> subprocess.Popen:
    """A Python process running `code` from the repository root; it prints "ready" when it holds what it holds."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process that takes `out`'s run lock, says "ready" and holds it for two minutes."""
    return start(
        f"""
        import time
        from alibi_lm.checkpoints import run_lock
        with run_lock({str(out)!r}):
            print("ready", flush=True)
            time.sleep(120)
        """
    )


def test_a_second_run_refuses_naming_the_first_and_changes_no_byte(workdir: Path):  # noqa: F811
    out = workdir / "locked"
    holder = hold_lock(out)
    try:
        wait_for(lock_path(out), holder)
        assert holder.stdout.readline().strip() == "ready"
        before = snapshot(out)
        with pytest.raises(OutputDirLockedError, match=rf"in use by another run \(pid {holder.pid} on "):
            train(*parse_recipe(tiny_recipe(workdir, "locked")))
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_is_named_and_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    out = tmp_path / "out"
    holder = hold_lock(out)
    wait_for(lock_path(out), holder)
    assert holder.stdout.readline().strip() == "ready"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # what kill -9 leaves; the kernel released the lock itself
    with caplog.at_level(logging.WARNING, logger="alibi_lm.checkpoints"), run_lock(out):
        pass
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_path(out).exists()


def test_the_lock_lives_beside_the_folder_and_goes_with_the_run(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="refused"), run_lock(out):
        assert lock_path(out) == tmp_path / ".out.alibi-lm.lock" and lock_path(out).exists()
        raise RuntimeError("refused")
    assert not out.exists() and not lock_path(out).exists()


def test_two_concurrent_runs_the_second_refuses_and_the_first_ends_as_a_solo_run(workdir: Path):  # noqa: F811
    solo = train(*parse_recipe(tiny_recipe(workdir, "solo", max_steps=4, save_steps=2))).output_dir
    recipe = tiny_recipe(workdir, "contested", max_steps=4, save_steps=2)
    first = start(
        f"""
        import time
        from transformers import TrainerCallback
        from alibi_lm.train import main

        class Slow(TrainerCallback):  # keeps the first run in the middle of training while the second starts
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    print("ready", flush=True)
                    time.sleep(3)

        raise SystemExit(main([{str(recipe)!r}], [Slow()]))
        """
    )
    assert first.stdout.readline().strip() == "ready"
    with pytest.raises(OutputDirLockedError, match=f"pid {first.pid}"):
        train(*parse_recipe(recipe))
    assert first.wait(timeout=300) == 0, first.communicate()[1][-2000:]
    contested = workdir / "contested"
    different = {"trainer_state.json", "training_args.bin"}  # run times and the output_dir they record
    same = {name: digest for name, digest in snapshot(solo).items() if Path(name).name not in different}
    got = {name: digest for name, digest in snapshot(contested).items() if Path(name).name not in different}
    assert got.keys() == same.keys()
    assert got["model.safetensors"] == same["model.safetensors"]
