"""One definition per option (issue 27): every command's parser is built from config dataclasses, and an
option name shared by several commands has one default and one help text everywhere.

Every command-line module exposes ``build_parser()``; the test builds them all (subcommands included),
collects each option string with its default and help, and compares them across commands. The one name
allowed to differ is ``--out``: each command's own product (a bundle, a results folder, a JSON file).
"""

from __future__ import annotations

import argparse
import ast
import importlib
from collections import defaultdict

import pytest

from tools.toy_assets import REPO

PACKAGES = ("common", "tiles", "runtime", "train", "export", "tools")
# each command's own product: the one name whose meaning (and so its help) is per command
PER_COMMAND = {"--out"}


def _cli_modules() -> list[str]:
    """Every module of the packages that builds an ArgumentParser (itself, or by ``common.cli.options_parser``,
    the factory, which is not a command)."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            text = path.read_text()
            if path != REPO / "common" / "cli.py" and ("ArgumentParser(" in text or "options_parser(" in text):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def _walk(parser: argparse.ArgumentParser, command: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{command} {name}")
        elif action.option_strings and action.help is not argparse.SUPPRESS and action.dest != "help":
            yield command, action


def _all_options() -> dict[str, list[tuple[str, object, str]]]:
    by_name = defaultdict(list)
    for module in _cli_modules():
        parser = importlib.import_module(module).build_parser()
        for command, action in _walk(parser, module):
            for name in action.option_strings:
                by_name[name].append((command, action.default, action.help))
    return by_name


def test_every_command_line_module_exposes_build_parser():
    modules = _cli_modules()
    assert {"runtime.__main__", "export.__main__", "tiles.__main__", "train.__main__", "tools.demo"} <= set(modules)
    for module in modules:
        assert callable(getattr(importlib.import_module(module), "build_parser", None)), module


def test_options_come_from_dataclasses_only():
    """No hand-declared option anywhere: ``add_argument`` is called by common.cli alone."""
    offenders = []
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            if path == REPO / "common" / "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_a_shared_option_has_one_default_and_one_help_everywhere():
    by_name = _all_options()
    shared = {n: uses for n, uses in by_name.items() if len({c for c, _, _ in uses}) > 1}
    assert {"--hfov-deg", "--hfov", "--altitudes-m", "--precision", "--threads", "--bundle", "--db",
            "--set", "--max-frames"} <= set(shared)  # the ones issue 27 named are shared, and tested here
    differing = {}
    for name, uses in shared.items():
        if name in PER_COMMAND:
            continue
        variants = {(repr(default), text) for _, default, text in uses}
        if len(variants) > 1:
            differing[name] = sorted(uses, key=str)
    assert not differing, "\n".join(f"{n}: {u}" for n, u in differing.items())
    # the exemption is real (more than one meaning), not a place to hide a drift
    assert all(len({h for _, _, h in by_name[n]}) > 1 for n in PER_COMMAND)


def test_hfov_is_one_option_with_one_rule():
    by_name = _all_options()
    uses = by_name["--hfov-deg"]
    assert len({c for c, _, _ in uses}) >= 8  # serve, replay, export, tiles preview/view and tools
    assert {d for _, d, _ in uses} == {None}
    assert by_name["--hfov"] == uses  # the old name is an alias of the same option


@pytest.mark.parametrize("argv, message", [
    (["--hfov", "179"], "hfov_deg must be in (0, 150] degrees"),
    (["--altitudes-m", "nan"], "altitudes_m must be a finite number"),
    (["--stride-frac", "0"], "stride_frac must be in (0, 1]"),
    (["--calib-n", "0"], "calib_n must be a whole number >= 1"),
])
def test_the_range_check_is_where_the_option_is_parsed(capsys, argv, message):
    from export.__main__ import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--bundle", "B", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


NUMBERS_WITHOUT_DEFAULT = ("hfov_deg", "altitudes_m", "altitude_m", "heading_deg", "threads", "max_frames",
                           "batch_size", "photometric", "frames", "frame_px", "n", "runs", "calib_n")


def test_every_shared_number_carries_its_range_check():
    """A shared number without a check would be refused by one command and taken by another."""
    from common.options import SHARED, shared

    numeric = [n for n, spec in SHARED.items() if n in NUMBERS_WITHOUT_DEFAULT
               or isinstance(spec["default"], (int, float)) and not isinstance(spec["default"], bool)]
    assert len(numeric) >= 18
    assert [n for n in numeric if not callable(shared(n).metadata.get("check"))] == []


def test_paths_of_the_old_options_still_parse():
    """The names people have in their scripts keep working (aliases)."""
    from export.__main__ import build_parser as export_parser
    from runtime.__main__ import build_parser as runtime_parser

    a = export_parser().parse_args(["--bundle", "B", "--tiles", "m.tif", "--hfov", "70", "--altitudes", "150", "300",
                                    "--no-imagery", "--no-progress", "-v"])
    assert (a.hfov_deg, a.altitudes_m, a.imagery, a.progress, a.verbose) == (70.0, [150.0, 300.0], False, False, True)
    r = runtime_parser().parse_args(["replay", "geotiff", "--bundle", "B", "--map", "m.tif", "--altitudes", "200",
                                     "--hfov", "60", "--no-plots", "--max-frames", "3"])
    assert (r.altitudes_m, r.hfov_deg, r.plots, r.max_frames) == ([200.0], 60.0, False, 3)
    s = runtime_parser(replay=False).parse_args(["serve", "--bundle", "B", "--db", "D", "--source", "0",
                                                 "--altitude", "150", "--heading", "90"])
    assert (s.altitude_m, s.heading_deg) == (150.0, 90.0)
