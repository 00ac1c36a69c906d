"""Kill -9 a training run at a chosen point of its saves; used by tests/test_data_safety.py.

    python -m tests.fault_injection JOBS.json RESULTS.jsonl

JOBS.json is a list of {"point": NAME, "argv": [...]} (argv for `python -m alibi_lm.train`). The driver imports
torch, transformers and alibi_lm once, then forks one child per job (no torch op has run in the parent, so the
fork is clean). The child arms the fault named by `point` and runs the recipe; at that point it sends itself
SIGKILL, the way an OOM killer or a preempted node ends a job: no exception handler, no `finally`, no flush. The
parent appends one JSON line per job to RESULTS.jsonl: {"point": ..., "signal": 9} (or "exit" if the child ended
by itself).

Points (N is the occurrence: 2 = the second checkpoint this run saves):
    checkpoint-start            entering the checkpoint save
    checkpoint-weights-partial  half of the checkpoint's model.safetensors written
    checkpoint-after-weights    model.safetensors written, nothing else
    checkpoint-optimizer-partial  half of optimizer.pt written
    checkpoint-after-optimizer  optimizer.pt written, before scheduler, RNG and trainer_state.json
    checkpoint-state-empty      trainer_state.json created but not written
    checkpoint-before-rename    everything written and sealed (SHA256SUMS), not yet renamed into place
    checkpoint-after-rename     the checkpoint renamed into place
    final-weights-partial       half of the final model's model.safetensors written
    final-staged                the whole final model staged, not yet moved into output_dir
    final-install-partial       weights moved into output_dir, SHA256SUMS and config.json not yet
    final-after                 the final model in place, before the metrics and trainer_state.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

CHECKPOINT_OCCURRENCE = 2


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _truncate_and_die(path: str | os.PathLike) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    _die()


def arm(point: str) -> None:
    """Patch the libraries in this (child) process so that it kills itself at `point`."""
    import safetensors.torch
    import torch
    import transformers.modeling_utils
    from transformers.trainer_callback import TrainerState

    import alibi_lm.checkpoints as checkpoints
    import alibi_lm.train as train

    seen = {"checkpoint": 0}
    in_checkpoint = {"now": False}

    original_save_checkpoint = train.AlibiTrainer._save_checkpoint

    def save_checkpoint(self, model, trial):
        seen["checkpoint"] += 1
        armed = seen["checkpoint"] == CHECKPOINT_OCCURRENCE
        if armed and point == "checkpoint-start":
            _die()
        in_checkpoint["now"] = armed
        try:
            original_save_checkpoint(self, model, trial)
        finally:
            in_checkpoint["now"] = False

    train.AlibiTrainer._save_checkpoint = save_checkpoint

    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        staging = Path(filename).parent.name
        if in_checkpoint["now"] and point == "checkpoint-weights-partial":
            _truncate_and_die(filename)
        if in_checkpoint["now"] and point == "checkpoint-after-weights":
            _die()
        if staging == checkpoints.FINAL_STAGING and point == "final-weights-partial":
            _truncate_and_die(filename)

    transformers.modeling_utils.safe_save_file = save_file

    real_torch_save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        real_torch_save(obj, f, *args, **kwargs)
        if in_checkpoint["now"] and isinstance(f, (str, os.PathLike)) and Path(f).name == "optimizer.pt":
            if point == "checkpoint-optimizer-partial":
                _truncate_and_die(f)
            if point == "checkpoint-after-optimizer":
                _die()

    torch.save = torch_save

    real_save_to_json = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if in_checkpoint["now"] and point == "checkpoint-state-empty":
            Path(json_path).touch()
            _die()
        real_save_to_json(self, json_path)

    TrainerState.save_to_json = save_to_json

    real_write_checksums = checkpoints.write_checksums

    def write_checksums(folder):
        target = real_write_checksums(folder)
        if in_checkpoint["now"] and point == "checkpoint-before-rename":
            _die()
        return target

    checkpoints.write_checksums = write_checksums

    real_finish = train.finish_checkpoint

    def finish_checkpoint(*args, **kwargs):
        target = real_finish(*args, **kwargs)
        if in_checkpoint["now"] and point == "checkpoint-after-rename":
            _die()
        return target

    train.finish_checkpoint = finish_checkpoint

    real_install = checkpoints.install_staged_final_model

    def install(output_dir):
        if point == "final-staged" and (Path(output_dir) / checkpoints.FINAL_STAGED).is_dir():
            _die()
        return real_install(output_dir)

    checkpoints.install_staged_final_model = install

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        source = Path(src)
        if (
            point == "final-install-partial"
            and source.parent.name == checkpoints.FINAL_STAGED
            and source.name == checkpoints.CHECKSUMS_FILE
        ):
            _die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

    real_save_final = train.save_final_model

    def save_final_model(*args, **kwargs):
        result = real_save_final(*args, **kwargs)
        if point == "final-after":
            _die()
        return result

    train.save_final_model = save_final_model


def main(jobs_file: str, results_file: str) -> int:
    import torch  # noqa: F401  imported once, before the forks

    import alibi_lm.train  # noqa: F401

    jobs = json.loads(Path(jobs_file).read_text())
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                torch.set_num_threads(1)
                arm(job["point"])
                code = alibi_lm.train.main(job["argv"])
            except BaseException:  # noqa: BLE001 - report and leave without running the parent's code
                import traceback

                traceback.print_exc()
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        record = {"point": job["point"]}
        if os.WIFSIGNALED(status):
            record["signal"] = os.WTERMSIG(status)
        else:
            record["exit"] = os.WEXITSTATUS(status)
        with open(results_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
