"""Every ``--option`` README.md spells for ``python -m runtime/export/tiles/train`` is one the command's own
``build_parser()`` accepts and acts on (issue 29.1).

The parsers are built directly (``build_parser()`` of each command, the one ``main`` uses), never copied.
A removed option (the per-frame gate's ``--fusion``, ``--min-confidence``, ``--acquire-frames``,
``--search-radius-m``) is still *known* to the parsers, so that it is refused by name with the reason: a
README that names one is caught here, which a check of "the parser knows the string" would not do.
A fenced command is parsed whole (types, choices, required arguments): argparse's own ``parse_args``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.readme_blocks import fenced_commands, inline_commands, prose_options, python_module

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import export.__main__ as export_main
    import runtime.__main__ as runtime_main
    import tiles.__main__ as tiles_main
    import tools.demo as demo
    import train.__main__ as train_main
    import train.evaluate as train_evaluate

    return {"runtime": runtime_main.build_parser(replay=True), "export": export_main.build_parser(),
            "tiles": tiles_main.build_parser(), "train": train_main.build_parser(),
            "train.evaluate": train_evaluate.build_parser(), "tools.demo": demo.build_parser()}


PARSERS = _parsers()


def _subs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            out.update(a.choices)
    return out


def _action(parser: argparse.ArgumentParser, option: str) -> argparse.Action | None:
    """The action argparse would run for ``option`` (exact, or an unambiguous prefix), else None."""
    exact = [a for a in parser._actions if option in a.option_strings]
    if exact:
        return exact[0]
    prefixed = [a for a in parser._actions if any(s.startswith(option) for s in a.option_strings)]
    return prefixed[0] if parser.allow_abbrev and len(prefixed) == 1 else None


def _removed(action: argparse.Action) -> bool:
    return type(action).__name__ == "_RemovedOption" or action.dest.startswith("removed_")


def _problems(name: str, argv: list[str]) -> list[str]:
    """Options of ``argv`` the command's parser (walking into sub-commands) lacks or refuses as removed."""
    parser, out = PARSERS[name], []
    for tok in argv:
        subs = _subs(parser)
        if tok in subs:
            parser = subs[tok]
            continue
        if not tok.startswith("--"):
            continue
        option = tok.split("=", 1)[0]
        action = _action(parser, option)
        if action is None:
            out.append(f"`python -m {name}` has no option {option}")
        elif _removed(action):
            out.append(f"`python -m {name}` refuses {option} as removed")
    return out


def _commands():
    for cmd in fenced_commands(README) + inline_commands(README):
        found = python_module(cmd.tokens)
        if found and found[0] in PARSERS:
            yield cmd, found[0], found[1]


def test_the_readme_commands_were_found():
    names = {name for _, name, _ in _commands()}
    assert names == set(PARSERS), f"README commands found for {sorted(names)} only"


def test_every_option_of_a_readme_command_exists_and_acts():
    problems = [f"README line {cmd.line}: {p}" for cmd, name, argv in _commands() for p in _problems(name, argv)]
    assert not problems, "\n".join(problems)


def test_every_fenced_command_parses():
    """argparse itself on the whole command as written: a wrong type, choice or missing argument fails."""
    problems = []
    for cmd, name, argv in _commands():
        if not cmd.fenced:
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                PARSERS[name].parse_args(argv)
        except SystemExit:
            problems.append(f"README line {cmd.line}: {err.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def test_every_option_the_prose_names_exists_and_acts():
    """A `--option` in the prose belongs to one of the commands, and is not one of the removed options."""
    known: dict[str, list[argparse.Action]] = {}

    def walk(parser):
        for a in parser._actions:
            for s in a.option_strings:
                known.setdefault(s, []).append(a)
        for sub in _subs(parser).values():
            walk(sub)

    for parser in PARSERS.values():
        walk(parser)
    foreign = {"--system-site-packages", "--nproc_per_node", "--nproc-per-node", "--no-deps"}  # venv, torchrun, pip
    problems = []
    for option, lines in prose_options(README).items():
        if option in foreign:
            continue
        actions = known.get(option)
        if not actions:
            problems.append(f"README lines {lines}: {option} is no option of runtime/export/tiles/train/tools.demo")
        elif all(_removed(a) for a in actions):
            problems.append(f"README lines {lines}: {option} was removed (the parsers refuse it)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, expect", [
    ("```bash\npython -m runtime serve --bundle b --fusion gate\n```\n", "refuses --fusion as removed"),
    ("```bash\npython -m export --bundle b --no-such-option\n```\n", "has no option --no-such-option"),
    ("```bash\npython -m runtime replay geotiff --min-confidence 0.5\n```\n", "refuses --min-confidence"),
])
def test_the_check_catches_a_removed_or_unknown_option(text, expect):
    cmd = fenced_commands(text)[0]
    name, argv = python_module(cmd.tokens)
    assert any(expect in p for p in _problems(name, argv)), _problems(name, argv)


def test_a_fenced_command_with_a_bad_value_fails_to_parse():
    err = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(err):
        PARSERS["runtime"].parse_args(["serve", "--bundle", "b", "--keyframe-s", "soon"])
    assert re.search(r"--keyframe-s", err.getvalue())


def test_every_glossary_link_has_its_entry_and_the_glossary_defines_the_metrics():
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', README))
    links = set(re.findall(r"\]\(#(g-[\w-]+)\)", README))
    assert links and not links - anchors, f"README links to glossary entries that do not exist: {links - anchors}"
    glossary = README.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for term in ("R@1", "r95", "availability", "time to first fix", "calibration", "wrong trusted fix",
                 "footprint", "layer", "keyframe", "registration", "odometry"):
        assert f"**{term}**" in glossary, f"the glossary lacks {term}"
    for column in ("avail", "ttff", "wrong", "calib"):  # the demo table's metric columns, linked
        assert re.search(rf"\[{column}\]\(#g-", README), f"the column {column} is not linked to the glossary"
