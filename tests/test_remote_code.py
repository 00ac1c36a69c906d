"""The remote code a folder ships is the modeling file and what it imports, and it runs where alibi_lm is not."""

from __future__ import annotations

import json
import site as site_module
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alibi_lm.model_files import MODELING_FILES, remote_code_of
from tests.tiny import random_ids, saved_folder, tiny_model


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A fresh virtual environment that sees this interpreter's torch and transformers but not alibi_lm.

    Its `.pth` file puts this interpreter's site-packages folders (a venv's and, with `--system-site-packages`, the base
    Python's) on the path as plain entries, so the `.pth` files in them (the editable install's finder for alibi_lm
    among them) are not run.
    """
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "outer.pth").write_text("".join(folder + "\n" for folder in site_module.getsitepackages()))
    probe = subprocess.run([str(python), "-c", "import alibi_lm"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'alibi_lm'" in probe.stderr
    return python


def test_a_saved_folder_round_trips_through_transformers_alone(bare_python, tmp_path):
    model = tiny_model(num_hidden_layers=2).eval()
    folder = saved_folder(model, tmp_path / "model")
    assert {p.name for p in folder.glob("*.py")} == set(MODELING_FILES)
    ids = random_ids(2, 40)  # past the tiny model's training length of 16
    with torch.no_grad():
        expected = model(ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load({str(tmp_path / "ids.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        loaded = sorted(m for m in sys.modules if m.startswith("transformers_modules"))
        print(json.dumps({{"class": type(model).__module__, "modules": loaded,
                          "alibi_lm": any(m.startswith("alibi_lm") for m in sys.modules)}}))
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(bare_python), "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["alibi_lm"] and report["class"].startswith("transformers_modules")
    # transformers fetched every shipped module by following the relative imports
    assert {name.rsplit(".", 1)[-1] for name in report["modules"]} >= {Path(n).stem for n in MODELING_FILES}
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=0, rtol=0)


def test_a_folder_ships_its_own_modeling_files_and_what_they_import(tmp_path):
    folder = saved_folder(tiny_model(), tmp_path / "model")
    assert remote_code_of(folder) == {name: folder / name for name in MODELING_FILES}
    bare = tmp_path / "bare"
    bare.mkdir()
    assert set(remote_code_of(bare)) == set(MODELING_FILES)  # none of its own: this package's


def test_a_folder_whose_modeling_file_imports_a_missing_module_is_named(tmp_path):
    folder = saved_folder(tiny_model(), tmp_path / "model")
    (folder / "alibi_masks.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"modeling_alibi\.py imports alibi_masks\.py, which .* does not hold"):
        remote_code_of(folder)


def test_each_head_loads_from_an_lm_folder_with_transformers_alone(bare_python, tmp_path):
    # transformers' generic heads build their decoder with AutoModel.from_config, which remote code cannot resolve.
    model = tiny_model().eval()
    folder = saved_folder(model, tmp_path / "model")
    ids = random_ids(2, 40)
    with torch.no_grad():
        expected = model.model(ids).last_hidden_state
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import torch, transformers
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        for name in ("Sequence", "Token"):
            auto = getattr(transformers, f"AutoModelFor{{name}}Classification")
            head = auto.from_pretrained({str(folder)!r}, trust_remote_code=True, num_labels=3).eval()
            with torch.no_grad():
                torch.save(head.model(ids).last_hidden_state, {str(tmp_path)!r} + f"/{{name}}.pt")
        qa = transformers.AutoModelForQuestionAnswering.from_pretrained({str(folder)!r}, trust_remote_code=True)
        with torch.no_grad():
            torch.save(qa.eval().model(ids).last_hidden_state, {str(tmp_path / "QA.pt")!r})
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(bare_python), "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("Sequence", "Token", "QA"):
        torch.testing.assert_close(torch.load(tmp_path / f"{name}.pt"), expected, atol=0, rtol=0)
