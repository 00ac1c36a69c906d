"""transformers' own shared model tests (the machinery Llama passes) against AlibiModel / AlibiForCausalLM.

`tests/transformers_shared/assemble.py` builds a harness from transformers' test files (the 5.24.0 sdist from
PyPI and a transformers git mirror, in a cache directory, never in this repository) and runs
`tests/transformers_shared/test_modeling_alibi.py` there in a subprocess. Slow: about the length of a
transformers model test file on the CPU.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ASSEMBLE = Path(__file__).parent / "transformers_shared" / "assemble.py"


def _load_assemble():
    spec = importlib.util.spec_from_file_location("alibi_lm_transformers_shared_assemble", ASSEMBLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_transformers_shared_model_tests():
    assemble = _load_assemble()
    try:
        assemble.assemble()
    except assemble.HarnessUnavailableError as error:
        pytest.skip(f"transformers' shared test harness cannot be assembled: {error}")

    code, output = assemble.run()
    counts = assemble.parse_summary(output)
    print(f"transformers shared tests on the ALiBi model and its heads: {counts}")
    failed = failures(output)
    if failed and assemble.TRANSFORMERS_VERSION != assemble.PINNED_VERSION:
        # Another release's tests on helpers from the mirror's 5.24-era commit: some fail for every model. Ours must
        # fail no test that Llama passes in the same harness.
        _, control_output = assemble.run(control=True)
        llama = {name.replace("LlamaModelTest", "AlibiModelTest") for name in failures(control_output, "llama")}
        print(f"failing for Llama too in the {assemble.TRANSFORMERS_VERSION} harness: {sorted(llama)}")
        failed -= llama
    assert not failed, f"{counts}\n" + "\n".join(sorted(failed))
    assert counts.get("passed", 0) > 0, f"pytest exit {code}, {counts}\n{output[-5000:]}"
    assert code == 0 or assemble.TRANSFORMERS_VERSION != assemble.PINNED_VERSION, output[-5000:]


def failures(output: str, model: str = "alibi") -> set[str]:
    """The failed and erroring test ids of pytest's `-rfE` report, without the file path."""
    prefixes = ("FAILED ", "SUBFAILED", "ERROR ")
    return {
        line.split("::", 1)[1].split(" - ")[0]
        for line in output.splitlines()
        if line.startswith(prefixes) and f"models/{model}/" in line and "::" in line
    }
