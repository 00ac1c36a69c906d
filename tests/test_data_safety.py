"""Nothing lost: kill -9 a training run at every point of its saves, then check what is left, refuse, and resume.

The run under test resumes a 4-step run (checkpoints 2 and 4, final model A) and trains to step 8, saving
checkpoints 6 and 8 and final model B. `tests/fault_injection.py` kills it (SIGKILL, in a forked child) at one point
of the save of checkpoint-8 or of the final model. After each kill:

- every `checkpoint-N` in the folder is whole and matches what was written (hash-checked), and the previous final
  model A is intact (or, once the whole of B is staged, B is; the next start finishes moving it in);
- a re-run without resume refuses with a message that names the folder's contents, and changes no byte;
- `--resume_from_checkpoint true` finishes the run, with the weights of a run that was never killed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alibi_lm.checkpoints import FINAL_STAGED, OutputDirInUseError, check_checkpoint, checkpoints
from alibi_lm.cli import main as cli_main
from alibi_lm.data import wikipedia_texts
from alibi_lm.integrity import CHECKSUMS_FILE, IntegrityError, verify_checksums
from alibi_lm.loading import load_model
from alibi_lm.train import parse_recipe, train
from tests.tiny import cli_error

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_POINTS = [
    "checkpoint-start",
    "checkpoint-weights-partial",
    "checkpoint-after-weights",
    "checkpoint-optimizer-partial",
    "checkpoint-after-optimizer",
    "checkpoint-state-empty",
    "checkpoint-before-rename",
    "checkpoint-after-rename",
]
FINAL_POINTS = ["final-weights-partial", "final-staged", "final-install-partial", "final-after"]
POINTS = CHECKPOINT_POINTS + FINAL_POINTS


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_recipe(root: Path, output_dir: Path) -> Path:
    recipe = {
        "train_file": str(root / "train.txt"),
        "validation_file": str(root / "validation.txt"),
        "cache_dir": str(root / "cache"),
        "output_dir": str(output_dir),
        "vocab_size": 320,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "block_size": 32,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "max_steps": 4,
        "save_steps": 2,
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "report_to": "none",
        "seed": 0,
    }
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    return path


RESUME_TO_8 = ["--resume_from_checkpoint", "true", "--max_steps", "8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The 4-step run every test starts from: checkpoints 2 and 4 and final model A, in `root/base`."""
    root = tmp_path_factory.mktemp("safety")
    (root / "train.txt").write_text("\n".join(wikipedia_texts("train")[:200]))
    (root / "validation.txt").write_text("\n".join(wikipedia_texts("validation")[:20]))
    train(*parse_recipe(write_recipe(root, root / "base")))
    return root / "base"


def copy_of(base: Path, name: str) -> tuple[Path, Path]:
    """A copy of the base run as `name`, and its recipe."""
    folder = base.parent / name
    shutil.copytree(base, folder)
    return folder, write_recipe(base.parent, folder)


@pytest.fixture(scope="module")
def killed(base) -> dict:
    """A never-killed reference run from the base to step 8, and one copy killed at each point on the way."""
    root = base.parent
    reference, recipe = copy_of(base, "reference")
    train(*parse_recipe(recipe, RESUME_TO_8))

    jobs = []
    for point in POINTS:
        _, recipe = copy_of(base, point)
        jobs.append({"point": point, "argv": [str(recipe), *RESUME_TO_8]})
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault_injection", str(root / "jobs.json"), str(root / "results.jsonl")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = {r["point"]: r for r in map(json.loads, (root / "results.jsonl").read_text().splitlines())}
    return {"root": root, "base_files": snapshot(base), "reference": reference, "outcomes": outcomes}


@pytest.mark.parametrize("point", POINTS)
def test_kill_leaves_work_intact_refuses_rerun_and_resumes(killed, point):
    root, folder = killed["root"], killed["root"] / point
    assert killed["outcomes"][point] == {"point": point, "signal": signal.SIGKILL}
    base_files = killed["base_files"]

    # 1. What the run had when it was killed is intact: checkpoints 2 and 4 byte for byte, every checkpoint-N whole.
    after_kill = snapshot(folder)
    for name, digest in base_files.items():
        if name.startswith("checkpoint-"):
            assert after_kill.get(name) == digest, name
    for checkpoint in checkpoints(folder):
        check_checkpoint(checkpoint)  # trainer_state parses, headers whole, weights match SHA256SUMS
    names = {path.name for path in checkpoints(folder)}
    assert names >= {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    assert ("checkpoint-8" in names) == (point in ("checkpoint-after-rename", *FINAL_POINTS))
    final_a = {name: digest for name, digest in base_files.items() if "/" not in name and name != "trainer_state.json"}
    if point == "final-install-partial":
        # Mid-move: B's weights are in, A's manifest and config are out, and the rest of B waits, whole, in staging.
        assert not (folder / "config.json").exists()
        assert (folder / FINAL_STAGED / "config.json").is_file()
        assert (folder / FINAL_STAGED / CHECKSUMS_FILE).is_file()
    elif point == "final-after":
        verify_checksums(folder, required=True)  # B is in place
    else:
        for name in ("config.json", "model.safetensors", CHECKSUMS_FILE):
            assert after_kill[name] == final_a[name], name  # A, untouched
        verify_checksums(folder, required=True)

    # 2. A re-run without resume refuses, names what is there, and changes nothing.
    with pytest.raises(
        OutputDirInUseError, match=r"already holds a run's work \(.*checkpoint-2/.*nothing was changed"
    ):
        train(*parse_recipe(write_recipe(root, folder)))
    assert snapshot(folder) == after_kill

    # 3. Resuming finishes the run, as if it had never been killed.
    result = train(*parse_recipe(write_recipe(root, folder), RESUME_TO_8))
    assert result.global_step == 8
    checked = verify_checksums(folder, required=True)  # the weights, and config, tokenizer and code with them
    assert folder / "model.safetensors" in checked and folder / "config.json" in checked
    assert not any(entry.name.startswith((".tmp-", FINAL_STAGED)) for entry in folder.iterdir())
    assert {path.name for path in checkpoints(folder)} == {f"checkpoint-{n}" for n in (2, 4, 6, 8)}
    expected = load_file(killed["reference"] / "model.safetensors")
    got = load_file(folder / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Overwrite, refusal and resume, without a kill


def flip_a_bit_in_tensor_data(file: Path) -> None:
    """Flip one bit in the last byte of a safetensors file: inside tensor data, so the header stays valid."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


def test_a_folder_holding_only_weights_is_not_overwritten(base):
    folder = base.parent / "weights-only"
    folder.mkdir()
    shutil.copyfile(base / "model.safetensors", folder / "model.safetensors")
    before = snapshot(folder)
    with pytest.raises(OutputDirInUseError, match=r"already holds a run's work \(model\.safetensors\)"):
        train(*parse_recipe(write_recipe(base.parent, folder)))
    assert snapshot(folder) == before


def test_overwrite_removes_the_old_runs_checkpoints_so_resume_cannot_continue_it(base, caplog):
    folder, recipe = copy_of(base, "overwritten")
    (folder / "notes.txt").write_text("kept: not part of a run")
    with caplog.at_level(logging.WARNING, logger="alibi_lm.checkpoints"):
        train(*parse_recipe(recipe, ["--overwrite_output_dir", "true", "--max_steps", "1", "--save_steps", "100"]))
    assert re.search(r"removed the previous run's .*checkpoint-2/, checkpoint-4/.*model\.safetensors", caplog.text)
    # Only the new run's own checkpoint (Trainer saves at the last step) is left; user files stay.
    assert checkpoints(folder) == [folder / "checkpoint-1"] and (folder / "notes.txt").is_file()
    verify_checksums(folder, required=True)  # the new final model
    # Resume finds the new run's checkpoint-1; the old run's checkpoint-4 is no longer there to continue from.
    result = train(*parse_recipe(recipe, ["--resume_from_checkpoint", "true", "--max_steps", "1"]))
    assert result.global_step == 1


@pytest.mark.parametrize("damage", ["empty trainer_state.json", "flipped bit in the weights"])
def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(base, damage, caplog):
    folder, recipe = copy_of(base, f"damaged-{damage.split()[0]}")
    newest = folder / "checkpoint-4"
    if damage.startswith("empty"):
        (newest / "trainer_state.json").write_text("")  # created, never written
        reason = "damaged trainer_state.json"
    else:
        flip_a_bit_in_tensor_data(newest / "model.safetensors")
        reason = "sha256 .* does not match"
    with caplog.at_level(logging.WARNING, logger="alibi_lm.checkpoints"):
        result = train(*parse_recipe(recipe, ["--resume_from_checkpoint", "true"]))
    assert re.search(rf"Skipping checkpoint-4: .*{reason}", caplog.text)
    assert result.global_step == 4
    assert [e["step"] for e in result.log_history if "loss" in e] == [1, 2, 3, 4]  # steps 3-4 redone from 2
    check_checkpoint(folder / "checkpoint-4")  # saved again, whole


@pytest.mark.parametrize("damage", ["flipped bit", "truncated"])
def test_damaged_weights_are_named_by_every_loader_and_by_verify(base, capsys, damage):
    folder, _ = copy_of(base, f"damaged-weights-{damage.split()[0]}")
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        pattern = r"model\.safetensors \(\d+ bytes\) is not a valid safetensors file, probably truncated"
        error: type[Exception] = ValueError
    else:
        flip_a_bit_in_tensor_data(weights)
        pattern = r"model\.safetensors: sha256 [0-9a-f]{64} does not match [0-9a-f]{64} recorded in SHA256SUMS"
        error = IntegrityError
    for argv in (
        ["verify", str(folder)],
        ["generate", str(folder), "--prompt", "The"],
        ["eval", str(folder), "--data", str(base.parent / "validation.txt"), "--lengths", "8"],
        ["push", str(folder), "user/bit-flip", "--dry-run"],  # refused before the list is even shown
    ):
        assert re.search(pattern, cli_error(argv, capsys)), argv
    with pytest.raises(error, match=pattern):
        load_model(folder)
    assert cli_main(["verify", str(base)]) == 0
    assert "sha256 matches SHA256SUMS" in capsys.readouterr().out
