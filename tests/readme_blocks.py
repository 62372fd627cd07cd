"""Test helper: the commands README.md shows, and what each command's own parser says about them.

``fenced_commands(text)`` reads the fenced shell blocks (```bash, sh, shell, console): continuation lines
joined, comments dropped, ``&&`` splitting one line into commands, a pipeline kept whole.
``inline_commands(text)`` reads the code spans of the prose that are commands (``python -m ...``,
``torchrun ...``), often partial (``python -m runtime replay geotiff``): they get the option check only.

``prose_options(text)`` lists the ``--options`` the prose names in code spans.
``python_module(cmd)`` names the module a command runs (``python -m X``, ``torchrun ... -m X``) and its
arguments. ``module_main(name)`` is the function ``python -m name`` calls. ``unknown_options(name, argv)``
lists the options of ``argv`` that the command's argparse parser does not accept (as argparse matches them,
unambiguous prefixes included); ``parse_command(name, argv)`` runs the parser on the whole argument list
(types, choices, required arguments) and stops before the command does any work; ``option_strings(name)``
is every option the command and its sub-commands have. They get the parser by intercepting
``ArgumentParser.parse_args`` while the module's ``main`` runs: the parser is the one the command really
builds, never a copy.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass

FENCE_LANGS = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
_SPAN = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class Command:
    """One README command: its tokens (quotes removed, as the shell passes them), the README line it
    starts on, and whether it came from a fenced block (complete) or an inline span (maybe partial)."""

    tokens: tuple[str, ...]
    line: int
    fenced: bool

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def shell(self) -> str:
        """The command as a shell line (pipes and redirections left unquoted)."""
        return " ".join(t if t in ("|", ">", "2>&1") else shlex.quote(t) for t in self.tokens)


def _split_and(tokens: list[str]) -> list[list[str]]:
    out, cur = [], []
    for t in tokens:
        if t == "&&":
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    out.append(cur)
    return [c for c in out if c]


def fenced_commands(markdown: str) -> list[Command]:
    """Every command of the fenced shell blocks, in README order."""
    cmds: list[Command] = []
    in_block, shell_block, pending, start = False, False, "", 0
    for no, line in enumerate(markdown.splitlines(), 1):
        m = _FENCE.match(line)
        if m:
            if in_block:
                in_block = False
                continue
            in_block, shell_block = True, m.group(1).lower() in FENCE_LANGS
            continue
        if not (in_block and shell_block):
            continue
        if not pending:
            start = no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        tokens = shlex.split(logical, comments=True)
        cmds += [Command(tuple(c), start, True) for c in _split_and(tokens)]
    return cmds


def inline_commands(markdown: str) -> list[Command]:
    """The prose's code spans that are commands (outside fenced blocks), in README order."""
    cmds: list[Command] = []
    in_block = False
    for no, line in enumerate(markdown.splitlines(), 1):
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for span in _SPAN.findall(line):
            try:
                tokens = [t for t in shlex.split(span) if t != "..."]
            except ValueError:
                continue
            if tokens == ["torchrun"]:  # the tool named, not a command
                continue
            if python_module(tokens) is not None:
                cmds.append(Command(tuple(tokens), no, False))
    return cmds


def prose_options(markdown: str) -> dict[str, list[int]]:
    """Every ``--option`` in a code span of the prose (outside fenced blocks): option -> README lines."""
    found: dict[str, list[int]] = {}
    in_block = False
    for no, line in enumerate(markdown.splitlines(), 1):
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            for span in _SPAN.findall(line):
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", span):
                    found.setdefault(option, []).append(no)
    return found


def python_module(tokens) -> tuple[str, list[str]] | None:
    """(module, arguments) of ``python -m X ...`` / ``torchrun [opts] -m X ...``; None for other commands."""
    tokens = list(tokens)
    if len(tokens) >= 3 and re.fullmatch(r"(\S*/)?python3?", tokens[0]) and tokens[1] == "-m":
        return tokens[2], tokens[3:]
    if tokens[:1] == ["torchrun"]:
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(tokens[1:])
        if args.module:
            return args.training_script, list(args.training_script_args)
    return None


def module_main(name: str):
    """The ``main`` that ``python -m name`` runs (``name/__main__.py`` for a package)."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"no module named {name!r}")
    mod = importlib.import_module(name + ".__main__" if spec.submodule_search_locations else name)
    return mod.main


class _Stop(Exception):
    def __init__(self, parser, namespace=None):
        super().__init__("parser intercepted")
        self.parser, self.namespace = parser, namespace


@contextlib.contextmanager
def _intercept(parse: bool):
    real = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise _Stop(self, real(self, args, namespace) if parse else None)

    argparse.ArgumentParser.parse_args = stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real


def _run_parser(name: str, argv: list[str], parse: bool) -> _Stop:
    main = module_main(name)
    err = io.StringIO()
    with _intercept(parse), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(argv))
        except _Stop as stop:
            return stop
        except SystemExit as e:
            said = err.getvalue().strip().splitlines()[-1:]
            raise AssertionError(f"python -m {name}: its parser refused {shlex.join(argv)!r} "
                                 f"(exit {e.code}): {said}") from None
    raise AssertionError(f"python -m {name} returned without parsing its arguments")


def command_parser(name: str, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top parser ``python -m name`` builds (given ``argv``: some commands add parsers on demand)."""
    return _run_parser(name, list(argv or []), parse=False).parser


def parse_command(name: str, argv: list[str]) -> argparse.Namespace:
    """The namespace the command's parser makes of ``argv``; AssertionError with argparse's message."""
    return _run_parser(name, argv, parse=True).namespace


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _accepts(parser: argparse.ArgumentParser, option: str) -> bool:
    known = [s for a in parser._actions for s in a.option_strings]
    if option in known:
        return True
    if parser.allow_abbrev and option.startswith("--"):
        return len([s for s in known if s.startswith(option)]) == 1
    return False


def option_strings(name: str, argv: list[str] | None = None) -> set[str]:
    """Every option string of the command's parser and of all its sub-commands' parsers."""
    def walk(parser):
        out = {s for a in parser._actions for s in a.option_strings}
        for sub in subparsers(parser).values():
            out |= walk(sub)
        return out
    return walk(command_parser(name, argv))


def unknown_options(name: str, argv: list[str]) -> list[str]:
    """Options of ``argv`` (``--x`` or ``--x=v``) that the parser in force at that point does not accept;
    a positional naming a sub-command moves on to that sub-command's parser."""
    parser = command_parser(name, argv)
    bad = []
    for tok in argv:
        subs = subparsers(parser)
        if tok in subs:
            parser = subs[tok]
        elif tok.startswith("-") and not re.fullmatch(r"-\d[\d.e-]*", tok) and tok != "-":
            option = tok.split("=", 1)[0]
            if not _accepts(parser, option):
                bad.append(option)
    return bad
