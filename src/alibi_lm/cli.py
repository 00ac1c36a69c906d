"""The `alibi-lm` console script: one entry point, one subcommand per module.

Each subcommand lives in the module that does the work and exposes
`add_subparser(subparsers)`, which registers its arguments and sets `func`.
Modules are imported lazily so that `alibi-lm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that implements it
SUBCOMMANDS: dict[str, str] = {
    "train": "alibi_lm.train",
    "eval": "alibi_lm.evaluation",
    "demo": "alibi_lm.demo",
    "bench": "alibi_lm.bench",
    "push": "alibi_lm.hub",
    "convert": "alibi_lm.convert",
    "generate": "alibi_lm.generate",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alibi-lm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in SUBCOMMANDS.items():
        if wanted in SUBCOMMANDS and name != wanted:
            # Only the chosen module is imported; the others get a bare entry for --help.
            subparsers.add_parser(name, help=f"see `alibi-lm {name} --help`")
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # subcommand not built yet
        module.add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
