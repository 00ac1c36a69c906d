"""The house: no import cycle, no private name crossing modules, import paths that are disk paths, each fact once."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_relative_import_files

from alibi_lm import model_files
from alibi_lm.modeling import alibi_encodings, configuration_alibi, modeling_alibi

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "alibi_lm"


def setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup


def package_files() -> list[Path]:
    """The package's files; pathlib's rglob does not enter the link to modeling/, so that folder is added."""
    return sorted({*PACKAGE.rglob("*.py"), *(PACKAGE / "modeling").glob("*.py")})


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, as its path on disk (the modeling folder through its link)."""
    found = {}
    for path in package_files():
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("alibi_lm", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """`(module, imported name)` for every import of our own modules in `path`, at any depth (a function-level
    import is as much an edge as one at the top)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                edges.append((submodule, "") if submodule in known else (target, alias.name))
        elif isinstance(node, ast.Import):
            edges += [(alias.name, "") for alias in node.names]
    return [(module, imported) for module, imported in edges if module in known and module != name]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {module for module, _ in imports(name, path, known)} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 30 and "alibi_lm.modeling.alibi_masks" in graph
    assert graph["alibi_lm.push"] >= {"alibi_lm.card", "alibi_lm.loading"}  # the finder sees real edges
    assert cycles(graph) == []


def test_the_readme_tour_lists_every_module_below_what_it_imports():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("**The package**, lowest first") : readme.index("**Each fact once**")]
    rows = [re.findall(r"`([a-z_]+)`", line.split("|")[1]) for line in table.splitlines() if line.startswith("| `")]
    level = {f"alibi_lm.{name}": row for row, names in enumerate(rows) for name in names}
    graph = import_graph()
    package = {m for m in graph if m.count(".") == 1} - {"alibi_lm.metrics", "alibi_lm.modeling"}
    assert set(level) == package  # every module in the tour, none that is not there
    upward = [f"{a} -> {b}" for a in package for b in graph[a] if b in level and level[b] > level[a]]
    assert upward == []


def test_no_private_name_of_our_own_crosses_modules():
    known = modules()
    crossing = [
        f"{name} imports {imported} from {module}"
        for name, path in known.items()
        for module, imported in imports(name, path, known)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert crossing == []


def test_an_import_path_is_a_disk_path():
    # No package_dir mapping beyond src/: alibi_lm.X is src/alibi_lm/X, the modeling folder included (a link).
    setup = setup_cfg()
    mapping = [line.strip() for line in setup["options"]["package_dir"].splitlines() if line.strip()]
    assert mapping == ["= src"]
    link = PACKAGE / "modeling"
    assert link.is_symlink() and link.resolve() == (ROOT / "modeling").resolve()
    assert Path(modeling_alibi.__file__).parent == link


def test_the_shipped_modeling_files_are_what_transformers_follows():
    followed = get_relative_import_files(modeling_alibi.__file__)
    assert set(model_files.MODELING_FILES) == {"modeling_alibi.py", *(Path(p).name for p in followed)}
    assert set(model_files.MODELING_FILES) == {p.name for p in (ROOT / "modeling").glob("*.py")} - {"__init__.py"}
    assert set(model_files.MODELING_FILES) <= set(model_files.DEFINING_FILES)


def sources() -> dict[Path, str]:
    return {path: path.read_text() for path in [*package_files(), *(ROOT / "recipes").rglob("*.py")]}


@pytest.mark.parametrize(
    ("what", "pattern", "home"),
    [
        ("the position encodings", r"\"sinusoidal\",\s*\"rotary\"", "modeling/configuration_alibi.py"),
        ("the default device", r"cuda\.is_available\(\) else \"cpu\"", "src/alibi_lm/machine.py"),
        ("the tokenizer files", r"\"tokenizer_config\.json\"", "src/alibi_lm/model_files.py"),
        ("the auto_map rule", r"\*\*AUTO_MAP\b", "modeling/configuration_alibi.py"),
        ("the held-out text", r"load_offline_wikipedia\(split=split, topic=config\)", "src/alibi_lm/scoring.py"),
        ("the data file formats", r"\"\.jsonl\": \"json\"", "src/alibi_lm/data_files.py"),
        ("the ALiBi bias", r"-\s*slopes\s*\*\s*distance", "modeling/alibi_masks.py"),
        ("the remote-code file list", r"\"modeling_alibi\.py\"\)", None),
    ],
)
def test_each_fact_lives_in_one_place(what, pattern, home):
    found = sorted(
        str(path.resolve().relative_to(ROOT)) for path, text in sources().items() if re.search(pattern, text)
    )
    assert found == ([home] if home else []), f"{what}: {found}"


def test_the_version_is_written_once():
    setup = setup_cfg()
    assert setup["metadata"]["version"] == "attr: alibi_lm.__version__"
    from importlib.metadata import version

    import alibi_lm

    assert version("alibi-lm") == alibi_lm.__version__


# What PyPI's Linux wheels of each torch release pin (`pip install --dry-run --report` against PyPI, 2026-12-07):
# torch 2.13.0 needs triton==3.7.1, 2.14.1 triton~=3.8.0, 2.15.0 triton~=3.9.0. A user's `pip install torch==X -e
# ".[dev]"` resolves only if our requirements admit both; this machine's local CPU wheel pins no Triton and hid it.
TORCH_PINS = {"2.13.0": "3.7.1", "2.14.1": "3.8.0", "2.15.0": "3.9.0"}


def setup_requirements(*sections: str):
    """The `packaging` requirements of setup.cfg's `sections` (multi-line values), comments left out."""
    from packaging.requirements import Requirement

    lines = [line.split("#")[0].strip() for section in sections for line in section.splitlines()]
    return [Requirement(line) for line in lines if line]


@pytest.mark.parametrize(("torch_version", "triton_version"), TORCH_PINS.items())
def test_every_extra_admits_each_torch_release_with_the_triton_it_pins(torch_version, triton_version):
    setup = setup_cfg()
    sections = [setup["options"]["install_requires"], *setup["options.extras_require"].values()]
    requirements = [r for r in setup_requirements(*sections) if r.name in ("torch", "triton")]
    assert {requirement.name for requirement in requirements} == {"torch", "triton"}
    for requirement in requirements:
        wanted = torch_version if requirement.name == "torch" else triton_version
        assert requirement.specifier.contains(wanted), f"{requirement} refuses {requirement.name} {wanted}"


def test_the_python_floor_is_one_our_requirements_install_on():
    # transformers 5.21 and later need Python 3.11 (`Requires-Python: >=3.11.0` in 5.24's wheel), so on 3.10 pip found
    # no transformers >= 5.24 and said only that; the floor we state must be one every requirement accepts.
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet

    setup = setup_cfg()
    ours = SpecifierSet(setup["options"]["python_requires"])
    floor = min(spec.version for spec in ours if spec.operator == ">=")
    for package in ("transformers", "torch", "accelerate", "datasets"):
        needed = SpecifierSet(metadata(package).get("Requires-Python") or "")
        assert needed.contains(floor), (
            f"python_requires {ours} admits Python {floor}, which {package} refuses ({needed})"
        )
    ruff = (ROOT / ".ci" / "ruff.toml").read_text()
    assert f'target-version = "py{floor.replace(".", "")}"' in ruff


def test_the_torch_floor_is_one_transformers_runs_on_and_the_slow_check_installs(monkeypatch):
    """setup.cfg said torch>=2.5, where transformers 5 runs without torch (`is_torch_available` wants 2.6): the floor
    must be a release transformers takes, and the one `test_torch_versions` runs the remote code on."""
    from packaging.version import Version
    from transformers.utils import import_utils

    from tests.test_torch_versions import OLDEST_TORCH

    installed = setup_requirements(setup_cfg()["options"]["install_requires"])
    torch_requirement = next(requirement for requirement in installed if requirement.name == "torch")
    floor = min(spec.version for spec in torch_requirement.specifier if spec.operator == ">=")
    monkeypatch.setattr(import_utils, "_is_package_available", lambda name, return_version=False: (True, floor))
    assert import_utils.is_torch_available.__wrapped__(), f"transformers runs without torch {floor}"
    assert Version(floor) == Version(OLDEST_TORCH)


def test_every_position_encoding_name_has_its_class():
    assert set(alibi_encodings.POSITION_ENCODING_CLASSES) == set(configuration_alibi.POSITION_ENCODINGS)
