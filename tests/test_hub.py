"""Push to the Hub and load back by repo id, end to end against a local Hub-protocol server (tests/hub_server.py).

ALiBi: Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022. https://arxiv.org/abs/2108.12409
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, LlamaConfig

from alibi_lm import AlibiConfig, AlibiForCausalLM, hub
from alibi_lm.cli import main as cli_main
from alibi_lm.evaluation import LengthResult, PerplexityResult
from tests.hub_server import HubServer, use_endpoint
from tests.tiny import random_ids, tiny_model

TOKEN = "hf_test_token"  # the local server ignores it; passing one keeps a developer's real token at home
EXTRAPOLATION = {16: 31.5, 32: 30.75, 64: 30.25}


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained folder of the tiny model, with an extrapolation table from the evaluation harness."""
    folder = tmp_path_factory.mktemp("checkpoint")
    tiny_model(seed=1).save_pretrained(folder)
    lengths = [
        LengthResult(length=k, ppl=v, nll=math.log(v), n_tokens=4096, n_windows=4096 // k)
        for k, v in EXTRAPOLATION.items()
    ]
    result = PerplexityResult(
        str(folder), "nonoverlapping", None, training_length=16, span_tokens=4096, lengths=lengths
    )
    result.to_json(folder / hub.RESULTS_FILE)  # what `alibi-lm eval CKPT --json CKPT/extrapolation.json` writes
    (folder / "_fsdp_stray.py").write_text("# torch source that FSDP2 saves can drag into a folder\n")
    return folder


@pytest.fixture(scope="module")
def pushed(hub_server: HubServer, checkpoint: Path) -> str:
    repo_id = "user/tiny-alibi"
    hub.push_to_hub(checkpoint, repo_id, token=TOKEN, endpoint=hub_server.url, datasets=["wikitext"])
    return repo_id


def test_push_uploads_weights_config_and_remote_code(hub_server: HubServer, pushed: str) -> None:
    files = hub_server.repo_files(pushed)
    assert {"model.safetensors", "config.json", "configuration_alibi.py", "modeling_alibi.py", "README.md"} <= set(
        files
    )
    assert hub.RESULTS_FILE not in files  # it goes into the card, not the repo
    assert "_fsdp_stray.py" not in files  # only our two modeling files travel as code
    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_alibi.AlibiConfig",
        "AutoModel": "modeling_alibi.AlibiModel",
        "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
    }


def test_model_card_has_metadata_training_length_and_extrapolation_table(hub_server: HubServer, pushed: str) -> None:
    card = ModelCard(hub_server.repo_files(pushed)["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert "alibi" in card.data.tags
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["wikitext"]
    assert "| training length (`max_position_embeddings`) | 16 tokens |" in card.text
    assert "| 16 (training length) | 31.50 |" in card.text
    assert "| 64 | 30.25 |" in card.text
    assert f'from_pretrained("{pushed}", trust_remote_code=True)' in card.text


def test_fresh_process_with_only_transformers_loads_by_repo_id(
    hub_server: HubServer, pushed: str, checkpoint: Path, tmp_path: Path
) -> None:
    # `sys.modules["alibi_lm"] = None` makes `import alibi_lm` fail there, so the classes can only come from the
    # repo's remote code; HF_HOME is empty, so every file comes through the server.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["alibi_lm"] = None
        import torch
        from transformers import AutoModel, AutoModelForCausalLM
        lm = AutoModelForCausalLM.from_pretrained("{pushed}", trust_remote_code=True)
        base = AutoModel.from_pretrained("{pushed}", trust_remote_code=True)
        ids = torch.load(sys.argv[1])
        torch.save({{"logits": lm(ids).logits, "modules": [type(lm).__module__, type(base).__name__]}}, sys.argv[2])
        """
    )
    ids = random_ids(2, 24)  # longer than the training length of 16
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub_server.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        check=False,  # the assert below shows stderr
        env=env,
        cwd=tmp_path,  # not the repo root, whose modeling/ folder would be importable
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["modules"][0].startswith("transformers_modules."), out["modules"]
    assert out["modules"][1] == "AlibiModel"
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(checkpoint)(ids).logits
    torch.testing.assert_close(out["logits"], expected, rtol=0, atol=1e-5)


def test_model_push_to_hub_method_round_trips(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_endpoint(monkeypatch, hub_server.url)
    # register_for_auto_class sets class attributes; undo them after the test so other saves stay code-free.
    monkeypatch.setattr(AlibiForCausalLM, "_auto_class", AlibiForCausalLM._auto_class)
    monkeypatch.setattr(AlibiConfig, "_auto_class", AlibiConfig._auto_class)
    model = hub.prepare_for_hub(tiny_model(seed=2))
    model.push_to_hub("user/pushed-by-method", token=TOKEN)
    files = hub_server.repo_files("user/pushed-by-method")
    assert {"configuration_alibi.py", "modeling_alibi.py"} <= set(files)
    assert set(json.loads(files["config.json"])["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    loaded = AutoModelForCausalLM.from_pretrained(
        "user/pushed-by-method", trust_remote_code=True, cache_dir=tmp_path, token=TOKEN
    )
    ids = random_ids(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_cli_push_with_results_file(hub_server: HubServer, checkpoint: Path, tmp_path: Path) -> None:
    results = tmp_path / "ppl.json"
    results.write_text(json.dumps([{"length": 16, "perplexity": 40.0}, {"length": 128, "perplexity": 42.5}]))
    argv = ["push", str(checkpoint), "user/from-cli", "--endpoint", hub_server.url, "--token", TOKEN]
    argv += ["--results", str(results), "--dataset", "wikitext", "--license", "mit"]
    assert cli_main(argv) == 0
    card = ModelCard(hub_server.repo_files("user/from-cli")["README.md"].decode())
    assert card.data.license == "mit"
    assert "| 128 | 42.50 |" in card.text  # --results wins over the folder's extrapolation.json
    assert "31.50" not in card.text


def test_push_folder_without_weights_sends_no_request(hub_server: HubServer, tmp_path: Path) -> None:
    tiny_model().config.save_pretrained(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(FileNotFoundError, match="no weights in"):
        hub.push_to_hub(tmp_path, "user/empty", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


def test_push_non_alibi_checkpoint_sends_no_request(hub_server: HubServer, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        hub.push_to_hub(tmp_path, "user/llama", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_truncated_safetensors_gives_error_naming_file(hub_server: HubServer, tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path)
    _truncate(tmp_path / "model.safetensors")
    # Raw from_pretrained raises safetensors' "Error while deserializing header: incomplete metadata, file not
    # fully covered", which names no file; our loader names it.
    with pytest.raises(ValueError, match=r"model\.safetensors .* probably truncated"):
        hub.load_model(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        hub.push_to_hub(tmp_path, "user/truncated", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


def test_missing_shard_is_named(tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1].name):
        hub.find_weights(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [('{"512": "high"}', "not an extrapolation table"), ('{"512": -1, "0": 3.0}', "positive lengths")],
)
def test_bad_results_file_is_rejected(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        hub.read_extrapolation(path)


def test_missing_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_to_hub(tmp_path / "nope", "user/nope", endpoint="http://127.0.0.1:9")
