"""Nothing leaves the model folder: push, verify, load and export read only files inside it (issue 26, point 1).

A link named `tokenizer.json` pointing at /etc/passwd used to pass `alibi-lm verify` and go to the Hub byte for byte.
Each planted case must be refused, naming the file and where it leads, before any request reaches a (local) Hub.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from alibi_lm import loading, push
from alibi_lm.cli import main as cli_main
from alibi_lm.integrity import CHECKSUMS_FILE, OutsideFolderError, share_weights_like_config, write_checksums
from tests.hub_server import HubServer
from tests.tiny import tiny_model

TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    tiny_model().save_pretrained(model)
    write_checksums(model)
    return model


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (secret / "templates").mkdir()
    (secret / "templates" / "evil.jinja").write_text("{{ secret }}")
    return secret


def link_tokenizer(folder: Path, outside: Path) -> str:
    (folder / "tokenizer.json").symlink_to(outside / "passwd")
    return "tokenizer.json"


def link_vocab(folder: Path, outside: Path) -> str:
    (folder / "vocab.json").symlink_to(outside / "passwd")
    return "vocab.json"


def link_template_folder(folder: Path, outside: Path) -> str:
    (folder / "additional_chat_templates").symlink_to(outside / "templates", target_is_directory=True)
    return "additional_chat_templates"


def index_out_of_the_folder(folder: Path, outside: Path) -> str:
    shutil.copy(folder / "model.safetensors", outside / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors").unlink()
    index = {
        "metadata": {},
        "weight_map": {"model.embed_tokens.weight": "../elsewhere/model-00001-of-00001.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return "../elsewhere/model-00001-of-00001.safetensors"


def manifest_out_of_the_folder(folder: Path, outside: Path) -> str:
    with open(folder / CHECKSUMS_FILE, "a") as f:
        f.write(f"{'0' * 64}  ../elsewhere/passwd\n")
    return "../elsewhere/passwd"


PLANTED: dict[str, Callable[[Path, Path], str]] = {
    "a file link out": link_tokenizer,
    "a second file link out": link_vocab,
    "a folder link out": link_template_folder,
    "'..' in the index": index_out_of_the_folder,
    "'..' in the manifest": manifest_out_of_the_folder,
}


@pytest.mark.parametrize("case", PLANTED)
def test_push_refuses_before_any_request(case: str, folder: Path, outside: Path, hub_server: HubServer):
    named = PLANTED[case](folder, outside)
    before = len(hub_server.requests)
    with pytest.raises(OutsideFolderError, match=named.replace(".", r"\.")):
        push.push_to_hub(folder, "user/leak", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


@pytest.mark.parametrize("case", PLANTED)
def test_verify_and_load_refuse(case: str, folder: Path, outside: Path, capsys: pytest.CaptureFixture):
    named = PLANTED[case](folder, outside)
    assert cli_main(["verify", str(folder)]) == 1
    assert named in capsys.readouterr().err
    with pytest.raises(OutsideFolderError, match=named.replace(".", r"\.")):
        loading.load_model(folder)
    exported = folder.parent / "exported"
    assert cli_main(["export", str(folder), str(exported), "--to", "mpt"]) == 1
    assert named in capsys.readouterr().err and not exported.exists()


def test_a_link_out_is_named_with_its_target(folder: Path, outside: Path):
    link_tokenizer(folder, outside)
    with pytest.raises(OutsideFolderError, match=rf"tokenizer\.json is a symbolic link to {outside / 'passwd'}"):
        push.plan_push(folder, "user/leak")


def test_a_nested_jinja_is_not_taken_by_the_top_level_pattern(folder: Path):
    nested = folder / "additional_chat_templates" / "drafts"
    nested.mkdir(parents=True)
    (nested / "private.jinja").write_text("{{ notes }}")
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}")
    plan = push.plan_push(folder, "user/templates")
    assert "additional_chat_templates/tool_use.jinja" in plan.files
    assert "additional_chat_templates/drafts/private.jinja" not in plan.files
    assert "additional_chat_templates/drafts/private.jinja" in plan.skipped


def test_links_inside_the_folder_and_a_hub_cache_snapshot_still_load(tmp_path: Path):
    # huggingface_hub's cache: snapshots/<commit>/<file> are links to ../../blobs/<sha>; loading one is no leak.
    blobs, snapshot = tmp_path / "models--user--tiny" / "blobs", tmp_path / "models--user--tiny" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    saved = tmp_path / "saved"
    tiny_model().save_pretrained(saved)
    for file in saved.iterdir():
        shutil.copy(file, blobs / file.name)
        os.symlink(os.path.relpath(blobs / file.name, snapshot), snapshot / file.name)
    assert loading.load_model(snapshot).config.model_type == "alibi"


def test_dry_run_lists_what_would_go_and_sends_nothing(folder: Path, hub_server: HubServer, capsys):
    before = len(hub_server.requests)
    assert push.push_to_hub(folder, "user/dry", token=TOKEN, endpoint=hub_server.url, dry_run=True) is None
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "config.json" in out and "modeling_alibi.py" in out
    assert len(hub_server.requests) == before


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_weights_get_the_config_s_permission_bits_and_links_are_left_alone(tmp_path: Path):
    """safetensors 0.8 writes weights 0600 whatever the umask; every folder this package saves gets config.json's
    bits on its weights instead, so another user (or a container's non-root user) can load what the config shows."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.ones(2)}, folder / "model.safetensors")
    (folder / "model.safetensors").chmod(0o600)  # what safetensors 0.8 leaves, made explicit
    outside = tmp_path / "outside.safetensors"
    save_file({"w": torch.ones(2)}, outside)
    outside.chmod(0o600)
    (folder / "linked.safetensors").symlink_to(outside)
    for config_mode in (0o644, 0o640):
        (folder / "config.json").chmod(config_mode)
        share_weights_like_config(folder)
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == config_mode
        assert outside.stat().st_mode & 0o777 == 0o600  # a link's target is not this folder's to change
    (folder / "config.json").unlink()
    assert share_weights_like_config(folder) == []
