"""The command-line layer every ``python -m`` entry point of the project shares (stdlib only).

- :class:`UserError`: the base of every error that is the user's to fix (a wrong path, value or file);
  the error classes of the packages derive from it.
- :func:`setup_logging`: one format, ``-v`` for debug.
- :func:`run_main`: calls an entry point; a user error is printed as one line (exit code 2), never as a
  traceback; Ctrl-C exits 130.
- :func:`add_dataclass_options`: command-line options generated from a config dataclass, so a knob that
  exists once in the config has the same name (the field with ``-``) everywhere it is exposed.

Exit codes of every command: 0 success, 1 a run that failed (a fault, not the user's input), 2 the
user's input was refused (the message says which value and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A mistake the user can fix; the message names the value and the fix."""


# What a command reports as one line with exit code 2: the project's own UserError, and the errors the
# standard library raises for a bad path or value before our code can wrap them.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_main(fn, *args, logger_name: str = "geoloc") -> int:
    """``fn(*args)`` as a command: its int result, or 2 with one line for a user error, 130 on Ctrl-C."""
    try:
        return int(fn(*args) or 0)
    except KeyboardInterrupt:
        logging.getLogger(logger_name).error("interrupted")
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logging.getLogger(logger_name).error("%s", text)
        return EXIT_USAGE


def _base_type(tp):
    """(type, is_list) of an annotation like ``float | None`` or ``list[str] | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def add_dataclass_options(parser: argparse.ArgumentParser, cls, *, skip=(), group: str | None = None) -> None:
    """One ``--field-name`` option per field of dataclass ``cls`` (``metadata``: ``help``, ``aliases``,
    ``choices``, ``metavar``). Every default is None, so an option that is not given overrides nothing
    (the dataclass default, or a config file's value, stays); booleans get ``--x/--no-x``."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        names = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f.metadata.get("help", "")
        if default not in (None, "") and not isinstance(default, bool):
            helptext += f" (default: {default})"
        kw = {"dest": f.name, "default": None, "help": helptext}
        if tp is bool:
            target.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        target.add_argument(*names, type=tp, nargs="+" if is_list else None, **kw)


def dataclass_values(cls, namespace: argparse.Namespace) -> dict:
    """The options of ``cls``'s fields that were given (not None) in a parsed namespace."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}


class _RemovedOption(argparse.Action):
    """An option that no longer exists: refused by name with the reason (never silently accepted)."""

    def __init__(self, option_strings, dest, why: str = "", **kw):
        kw.update(nargs="?", help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: {self.why}")


def add_removed_options(parser: argparse.ArgumentParser, removed: dict[str, str]) -> None:
    """Options ``--name`` (from ``removed``: field name -> why) that exit 2 with the reason when given."""
    for name, why in removed.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action=_RemovedOption, why=why,
                            dest=f"removed_{name}", default=None)
