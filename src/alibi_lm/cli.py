"""The `alibi-lm` console script: one entry point, one subcommand per module.

Each subcommand lives in the module that does the work and exposes
`add_subparser(subparsers)`, which registers its arguments and sets `func`.
Modules are imported lazily so that `alibi-lm --help` stays fast.

An error ends the command with one line on stderr, `alibi-lm COMMAND: error: MESSAGE`, and exit status 1; the
traceback is printed only with `alibi-lm --debug COMMAND ...` or `ALIBI_LM_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable

# subcommand -> module that implements it
SUBCOMMANDS: dict[str, str] = {
    "train": "alibi_lm.train",
    "eval": "alibi_lm.evaluation",
    "demo": "alibi_lm.demo",
    "bench": "alibi_lm.bench",
    "push": "alibi_lm.push",
    "convert": "alibi_lm.convert",
    "export": "alibi_lm.export",
    "generate": "alibi_lm.generate",
    "verify": "alibi_lm.loading",
    "window": "alibi_lm.window",
}
DEBUG_ENV = "ALIBI_LM_DEBUG"
# Errors whose message says it all; any other type is named in front of its message.
_PLAIN_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    TimeoutError,
    ConnectionError,
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alibi-lm", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--debug", action="store_true", help=f"print the full traceback of an error (or set {DEBUG_ENV}=1)"
    )
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
        accept_underscores(subparsers.choices[name])
    return parser


def accept_underscores(parser: argparse.ArgumentParser) -> None:
    """Accept each `--dashed-option` spelt `--dashed_option` too, as transformers' `HfArgumentParser` does for
    `alibi-lm train` (and as the keywords are named: `--max_new_tokens` is `generate`'s). Help and errors keep the
    dashed name alone."""
    for action in list(parser._actions):
        for option in action.option_strings:
            alias = "--" + option[2:].replace("-", "_")
            if option.startswith("--") and alias not in parser._option_string_actions:
                parser._option_string_actions[alias] = action


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_reporting_errors(command: str, func: Callable[[], int | None], debug: bool = False) -> int:
    """Run `func`; on an error print `alibi-lm COMMAND: error: MESSAGE` (the traceback only when debugging), return 1."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"alibi-lm {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's one place that turns any error into a message
        if debug_enabled(debug):
            traceback.print_exc()
        message = str(err) if isinstance(err, _PLAIN_ERRORS) and str(err) else f"{type(err).__name__}: {err}"
        hint = "" if debug_enabled(debug) else f" (traceback: alibi-lm --debug {command} ... or {DEBUG_ENV}=1)"
        print(f"alibi-lm {command}: error: {message}{hint}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return run_reporting_errors(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
