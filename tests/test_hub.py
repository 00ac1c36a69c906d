"""Push to the Hub and load back by repo id, end to end against a local Hub-protocol server (tests/hub_server.py).

ALiBi: Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022. https://arxiv.org/abs/2108.12409
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.utils import get_session
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from alibi_lm import AlibiConfig, AlibiForCausalLM, card, loading, model_files, push
from alibi_lm.cli import main as cli_main
from alibi_lm.scoring import LengthResult, PerplexityResult
from tests.hub_server import HubServer, use_endpoint
from tests.tiny import AUTO_CLASSES, random_ids, tiny_model

TOKEN = "hf_test_token"  # the local server ignores it; passing one keeps a developer's real token at home
EXTRAPOLATION = {16: 31.5, 32: 30.75, 64: 30.25}
FAKE_SECRET = "hf_FAKEsecretTOKENplantedINnotes0123456789"  # planted in a folder's notes; must never reach the Hub


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
    result.to_json(folder / card.RESULTS_FILE)  # what `alibi-lm eval CKPT --json CKPT/extrapolation.json` writes
    (folder / "_fsdp_stray.py").write_text("# torch source that FSDP2 saves can drag into a folder\n")
    return folder


@pytest.fixture(scope="module")
def pushed(hub_server: HubServer, checkpoint: Path) -> str:
    repo_id = "user/tiny-alibi"
    push.push_to_hub(checkpoint, repo_id, token=TOKEN, endpoint=hub_server.url, datasets=["wikitext"])
    return repo_id


def test_push_uploads_weights_config_and_remote_code(hub_server: HubServer, pushed: str) -> None:
    files = hub_server.repo_files(pushed)
    # Not the extrapolation.json (it goes into the card) nor _fsdp_stray.py (only the modeling files are code): the
    # modeling file and what it imports relatively, as transformers' remote-code loader fetches them.
    assert model_files.MODELING_FILES == (
        "alibi_attention.py",
        "alibi_blocked.py",
        "alibi_blocked_attention.py",
        "alibi_compile.py",
        "alibi_encodings.py",
        "alibi_inputs.py",
        "alibi_layout.py",
        "alibi_masks.py",
        "alibi_paged.py",
        "alibi_triton.py",
        "alibi_triton_kernels.py",
        "configuration_alibi.py",
        "modeling_alibi.py",
    )
    assert set(files) == {"model.safetensors", "config.json", "generation_config.json", "README.md"} | set(
        model_files.MODELING_FILES
    )
    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_alibi.AlibiConfig",
        "AutoModel": "modeling_alibi.AlibiModel",
        "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
        "AutoModelForSequenceClassification": "modeling_alibi.AlibiForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_alibi.AlibiForTokenClassification",
        "AutoModelForQuestionAnswering": "modeling_alibi.AlibiForQuestionAnswering",
    }


def test_model_card_has_metadata_training_length_and_extrapolation_table(hub_server: HubServer, pushed: str) -> None:
    model_card = ModelCard(hub_server.repo_files(pushed)["README.md"].decode())
    assert model_card.data.library_name == "transformers"
    assert model_card.data.pipeline_tag == "text-generation"
    assert "alibi" in model_card.data.tags
    assert model_card.data.license == "apache-2.0"
    assert model_card.data.datasets == ["wikitext"]
    assert "| training length (`train_length`) | 16 tokens |" in model_card.text
    assert "| context (`max_position_embeddings`) | 256 tokens |" in model_card.text
    assert "| 16 (training length) | 31.50 |" in model_card.text
    assert "| 64 | 30.25 |" in model_card.text
    assert f'from_pretrained("{pushed}", trust_remote_code=True)' in model_card.text


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
    model = model_files.prepare_for_hub(tiny_model(seed=2))
    model.push_to_hub("user/pushed-by-method", token=TOKEN)
    files = hub_server.repo_files("user/pushed-by-method")
    assert {"configuration_alibi.py", "modeling_alibi.py"} <= set(files)
    assert set(json.loads(files["config.json"])["auto_map"]) == AUTO_CLASSES
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
    model_card = ModelCard(hub_server.repo_files("user/from-cli")["README.md"].decode())
    assert model_card.data.license == "mit"
    assert "| 128 | 42.50 |" in model_card.text  # --results wins over the folder's extrapolation.json
    assert "31.50" not in model_card.text


def test_push_folder_without_weights_sends_no_request(hub_server: HubServer, tmp_path: Path) -> None:
    tiny_model().config.save_pretrained(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(FileNotFoundError, match="no weights in"):
        push.push_to_hub(tmp_path, "user/empty", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


def test_push_non_alibi_checkpoint_sends_no_request(hub_server: HubServer, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        push.push_to_hub(tmp_path, "user/llama", token=TOKEN, endpoint=hub_server.url)
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
        loading.load_model(tmp_path)
    before = len(hub_server.requests)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        push.push_to_hub(tmp_path, "user/truncated", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


def test_missing_shard_is_named(tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1].name):
        loading.find_weights(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [('{"512": "high"}', "not an extrapolation table"), ('{"512": -1, "0": 3.0}', "positive lengths")],
)
def test_bad_results_file_is_rejected(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        card.read_extrapolation(path)


def test_missing_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push.push_to_hub(tmp_path / "nope", "user/nope", endpoint="http://127.0.0.1:9")


# --- push hygiene: the allow-list, dry run, config against weights, timeouts ---------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sharded model with a tokenizer, in a folder that also holds what a training run leaves next to it."""
    folder = tmp_path_factory.mktemp("planted")
    tiny_model(seed=3).save_pretrained(folder, max_shard_size="20KB")
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(folder)
    (folder / "notes.txt").write_text(f"push with HF_TOKEN={FAKE_SECRET}\n")
    (folder / "wandb-credentials.json").write_text(json.dumps({"api_key": FAKE_SECRET}))
    lengths = [
        LengthResult(length=k, ppl=v, nll=math.log(v), n_tokens=4096, n_windows=4) for k, v in EXTRAPOLATION.items()
    ]
    result = PerplexityResult(
        str(folder), "nonoverlapping", None, training_length=16, span_tokens=4096, lengths=lengths
    )
    result.to_json(folder / card.RESULTS_FILE)  # model_name is the absolute path of the folder
    result.to_json(folder / "eval-2024-05-01.json")
    torch.save({"learning_rate": 3e-4, "hub_token": FAKE_SECRET}, folder / "training_args.bin")
    torch.save({"state": {}}, folder / "optimizer.pt")
    tiny_model(seed=4).save_pretrained(folder / "checkpoint-5")
    first_shard = sorted(folder.glob("model-*.safetensors"))[0]
    shutil.copy(first_shard, folder / "model-00001-of-00009.safetensors")  # left over from an earlier save
    digests = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(folder.glob("*.safetensors"))
    ]
    (folder / "SHA256SUMS").write_text("".join(digests))
    (folder / "_fsdp_stray.py").write_text("# torch source that FSDP2 saves can drag into a folder\n")
    return folder


PLANTED = [
    "notes.txt",
    "wandb-credentials.json",
    card.RESULTS_FILE,
    "eval-2024-05-01.json",
    "training_args.bin",
    "optimizer.pt",
    "checkpoint-5/",
    "model-00001-of-00009.safetensors",
    "SHA256SUMS",
    "_fsdp_stray.py",
]


def _model_repo_files(folder: Path) -> set[str]:
    """What a repo of the planted folder must hold: its shards by the index, configs, tokenizer, code, card."""
    shards = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1
    tokenizer = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    return (
        shards
        | tokenizer
        | {"model.safetensors.index.json", "config.json", "generation_config.json"}
        | {*model_files.MODELING_FILES, "README.md"}
    )


def test_push_uploads_exactly_the_allow_list_and_names_the_rest(
    hub_server: HubServer, planted: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="alibi_lm.push"):
        push.push_to_hub(planted, "user/planted", token=TOKEN, endpoint=hub_server.url)
    files = hub_server.repo_files("user/planted")
    assert set(files) == _model_repo_files(planted)
    assert not any(FAKE_SECRET.encode() in data for data in files.values())
    [message] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not uploaded: ")]
    assert sorted(message.removeprefix("not uploaded: ").split(", ")) == sorted(PLANTED)


def test_include_results_uploads_them_without_local_paths(
    hub_server: HubServer, planted: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    push.push_to_hub(planted, "user/planted-results", token=TOKEN, endpoint=hub_server.url, include_results=True)
    files = hub_server.repo_files("user/planted-results")
    assert set(files) == _model_repo_files(planted) | {card.RESULTS_FILE}
    local = str(tmp_path_factory.getbasetemp()).encode()  # every test folder is under it
    assert [name for name, data in files.items() if local in data] == []
    results = json.loads(files[card.RESULTS_FILE])
    assert results == {
        "model_name": planted.name,
        "mode": "nonoverlapping",
        "stride": None,
        "training_length": 16,
        "lengths": [{"length": k, "ppl": v, "nll": math.log(v), "n_tokens": 4096} for k, v in EXTRAPOLATION.items()],
    }
    model_card = ModelCard(files["README.md"].decode())
    assert "| 64 | 30.25 |" in model_card.text  # the model_card cites what was uploaded


def test_dry_run_lists_the_files_and_sends_nothing(
    hub_server: HubServer, planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(hub_server.requests)
    argv = ["push", str(planted), "user/dry-run", "--endpoint", hub_server.url, "--token", TOKEN]
    assert cli_main([*argv, "--dry-run", "--include-results"]) == 0
    assert len(hub_server.requests) == before
    assert "user/dry-run" not in hub_server.commits
    listed = re.findall(r"^  (\S+) +(\d+(?:\.\d)? (?:B|KiB|MiB|GiB))$", capsys.readouterr().out, flags=re.MULTILINE)
    assert {name for name, _ in listed} == _model_repo_files(planted) | {card.RESULTS_FILE}
    config_size = dict(listed)["config.json"]
    assert config_size.endswith(" KiB") or config_size.endswith(" B")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    tiny_model().save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_config_matching_weights_passes_with_tied_head_stored_once(saved: Path) -> None:
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118 - safe_open is not a Mapping
    loading.check_config_matches_weights(saved)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"vocab_size": 120},
            r"model\.embed_tokens\.weight has shape \[99, 32\] in model\.safetensors but config\.json "
            r"\(vocab_size=120, hidden_size=32\) expects \[120, 32\]",
        ),
        ({"num_hidden_layers": 3}, r"config\.json implies tensors the weights do not hold: model\.layers\.2\."),
        (
            {"num_hidden_layers": 1},
            r"the weights hold tensors the model of config\.json does not have: model\.layers\.1\.",
        ),
        ({"tie_word_embeddings": False}, r"the weights do not hold: lm_head\.weight$"),
    ],
)
def test_config_not_matching_weights_names_the_tensor(saved: Path, changes: dict, message: str) -> None:
    _edit_config(saved, **changes)
    with pytest.raises(ValueError, match=message):
        loading.check_config_matches_weights(saved)


def test_push_refuses_config_not_matching_weights_before_any_request(hub_server: HubServer, saved: Path) -> None:
    _edit_config(saved, vocab_size=120)
    before = len(hub_server.requests)
    with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight has shape \[99, 32\]"):
        push.push_to_hub(saved, "user/mismatch", token=TOKEN, endpoint=hub_server.url)
    assert len(hub_server.requests) == before


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts TCP connections and never answers: a Hub behind a hung proxy. Yields (url, connections)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    stop.set()
    thread.join(timeout=5)
    for conn in [*connections, listener]:
        conn.close()


def test_push_to_silent_hub_times_out_with_clear_error(
    silent_server: tuple[str, list[socket.socket]], checkpoint: Path
) -> None:
    url, connections = silent_server
    timeout_before = get_session().timeout
    errors: list[BaseException] = []

    def run_push() -> None:
        try:
            push.push_to_hub(checkpoint, "user/silent", token=TOKEN, endpoint=url, timeout=1, retries=1)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    # In a thread, so that a push without a timeout fails this test instead of hanging the run; the fixture's
    # teardown closes the connections, which ends such a push.
    start = time.monotonic()
    thread = threading.Thread(target=run_push, daemon=True)
    thread.start()
    thread.join(timeout=15)
    assert not thread.is_alive(), "push still waits for a server that never answers"
    assert time.monotonic() - start >= 2  # each of the two tries waited its 1 s
    [error] = errors
    assert isinstance(error, push.PushTimeoutError) and isinstance(error, TimeoutError)
    assert str(error) == f"push to {url} timed out after 1 s (2 tries); check the network or raise --timeout"
    assert len(connections) == 2  # one per try
    assert get_session().timeout == timeout_before  # huggingface_hub's client is as it was


def test_push_to_closed_port_fails_with_connection_error(checkpoint: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed on leaving the block: connections are refused
    with pytest.raises(
        push.PushConnectionError, match=rf"^push to {re.escape(url)} failed: ConnectError: .*\(1 try\)"
    ):
        push.push_to_hub(checkpoint, "user/closed", token=TOKEN, endpoint=url, retries=0)


def test_training_with_push_to_hub_uploads_the_allow_list_once_at_the_end(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trainer's own push would upload the whole output_dir (training_args.bin, results, any stray file) at every
    # save; the runner pushes the final model once, through the allow-list.
    from alibi_lm.data import wikipedia_texts
    from alibi_lm.train import parse_recipe, train

    use_endpoint(monkeypatch, hub_server.url)
    (tmp_path / "train.txt").write_text("\n".join(wikipedia_texts("train")[:100]))
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text(FAKE_SECRET)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"train_file: {tmp_path / 'train.txt'}\noutput_dir: {out}\ncache_dir: {tmp_path / 'cache'}\n"
        "vocab_size: 300\nhidden_size: 16\nnum_hidden_layers: 1\nnum_attention_heads: 2\nblock_size: 16\n"
        "max_steps: 2\nsave_steps: 1\nreport_to: none\npush_to_hub: true\nhub_model_id: user/trained\n"
        f"hub_token: {TOKEN}\n"
    )
    commits_before = sum(1 for r in hub_server.requests if "/commit/" in r[1])
    train(*parse_recipe(recipe))
    assert sum(1 for r in hub_server.requests if "/commit/" in r[1]) == commits_before + 1
    files = hub_server.repo_files("user/trained")
    assert set(files) == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        *model_files.MODELING_FILES,
        "README.md",
    }
    assert not any(FAKE_SECRET.encode() in data for data in files.values())
