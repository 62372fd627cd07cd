"""Every command README.md shows, walked the way a new user would (issue 16.4), so the README cannot drift.

``TABLE`` says, for every command of the README's fenced shell blocks, how it is checked, in the order the
steps run (one workspace for the whole file, the bundled NAIP years standing in for the user's files:
map2019.tif = 2014, map2020.tif = 2012, map2021.tif = 2020, map2022.tif = 2018):

- ``Run``: run for real as written, with a few README words replaced (``subs``) and small settings
  appended (``extra``: a later option wins in argparse), checking the exit status, the files the README
  says appear and the lines it shows. A command that fails here in the way the README's troubleshooting
  table describes (no TensorRT on this machine) runs too, and the documented message is checked.
- ``Skip``: not runnable here (a GPU, a Jetson, the network, or ``make demo``/``make test`` themselves),
  with the reason, after a check that still catches drift (the command's own parser, the Makefile, the
  extras in pyproject.toml).

A README command without an entry fails ``test_every_readme_command_has_an_entry``; so does an entry that
matches no command. Every command, fenced or inline in the prose, also has its ``python -m`` module
imported and every option it spells checked against the command's own argparse parser; every ``--option``
the prose names must belong to one of the commands. The whole file takes about 100 s on 2 shared cores.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.readme_blocks import (
    Command,
    command_parser,
    fenced_commands,
    inline_commands,
    module_main,
    option_strings,
    parse_command,
    prose_options,
    python_module,
    subparsers,
    unknown_options,
)
from tests.readme_steps import Run, Skip, execute
from tools.toy_assets import naip_files

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FENCED = fenced_commands(README)
INLINE = inline_commands(README)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MAPS = {"map2019.tif": 2014, "map2020.tif": 2012, "map2021.tif": 2020, "map2022.tif": 2018}
PROJECT = {"train", "export", "runtime", "tiles", "tools"}  # the packages whose commands the parsers check
SUES = "runs/sues200_naip/SUES-200-512x512"  # tools.make_sues200's dataset in SUES-200's layout
# A tiny timm model at 32 px, a few locations: the recipe's code paths in seconds
TINY = ["model.name=test_efficientnet", "model.pretrained=none", "model.img_size=32", "optim.batch_size=4",
        "data.num_workers=0", "eval.max_queries=8"]


def _sets(*items: str) -> tuple[str, ...]:
    return tuple(a for item in items for a in ("--set", item))


def _parses(cmd: Command) -> None:
    name, argv = python_module(cmd.tokens)
    parse_command(name, argv)
    assert not unknown_options(name, argv)


def _make_dry_run(target: str, module: str) -> Callable[[Command], None]:
    def check(cmd: Command) -> None:
        proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert re.search(rf"-m {re.escape(module)}\b", proc.stdout), proc.stdout
    return check


def _extras(cmd: Command) -> None:
    named = re.search(r"\.\[([\w,-]+)\]", cmd.text).group(1).split(",")
    missing = set(named) - set(PYPROJECT["project"]["optional-dependencies"])
    assert not missing, f"README installs extras {sorted(missing)} that pyproject.toml does not define"


def _dist(req: str) -> str:
    return re.split(r"[<>=~!\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _jetson_packages(cmd: Command) -> None:
    """The Jetson line installs what the runtime and mavlink extras need (OpenCV comes from JetPack) and
    the cuda-python the trt extra pins."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    line = {_dist(t): t for t in cmd.tokens[2:]}
    need = {_dist(r) for r in extras["runtime"] + extras["mavlink"]} - {"opencv-python-headless"}
    assert need <= set(line), f"the Jetson pip line lacks {sorted(need - set(line))}"
    assert line["cuda-python"] in extras["trt"], (line["cuda-python"], extras["trt"])


def _core_is_numpy(cmd: Command) -> None:
    """--no-deps leaves out the core dependencies: numpy only, which JetPack's Python has."""
    assert {_dist(r) for r in PYPROJECT["project"]["dependencies"]} == {"numpy"}


def _apt_package_is_the_one_the_errors_name(cmd: Command) -> None:
    from export.trt_build import INSTALL_HINT
    from runtime.engines.tensorrt_engine import TRT_MISSING

    assert "python3-libnvinfer" in cmd.tokens and "python3-libnvinfer" in TRT_MISSING + INSTALL_HINT


def _no_tensorrt_here() -> str | None:
    return "TensorRT is installed here: the build would run" if importlib.util.find_spec("tensorrt") else None


def _interrupted(proc, ws: Path) -> None:
    run = ws / "runs/sues150"
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "checkpoint.pt").is_file() and not (run / "DONE").exists()


def _resumed(proc, ws: Path) -> None:
    run = ws / "runs/sues150"
    assert "resume: " in (run / "command.txt").read_text()
    assert re.search(r"resumed .* step [1-9]", proc.stderr), proc.stderr[-2000:]


def _evaluated(proc, ws: Path) -> None:
    keys = set(json.loads((ws / "runs/sues150/eval.json").read_text()))
    assert {"drone2sat@150m[official]", "drone2sat@150m[query_only]"} <= keys, keys  # labelled protocols


def _exported(proc, ws: Path) -> None:
    """The exit status is the gate's decision, and the decision follows from its own figures and the
    README's limit (`--max-r1-drop 2`): 3 exactly when a variant's R@1 drop interval reaches past 2 points
    (the variant then deleted and out of the manifest, the database built), 0 otherwise. Which one a tiny
    model gets depends on the CPU's int8 kernels; each is checked for its reason."""
    bundle = ws / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "model.fp16.onnx"} <= files
    rejected = manifest["export"].get("gate_rejected") or {}
    kept = {f["precision"]: f["accuracy"] for f in manifest["files"] if f["precision"] != "fp32"}
    assert set(kept) | set(rejected) == {"fp16", "int8"}, (kept, rejected)
    for precision, rec in {**kept, **rejected}.items():
        assert rec["passed"] == (rec["r1_drop_ci"][1] <= 2) == (precision in kept), (precision, rec)
    assert proc.returncode == (3 if rejected else 0), (proc.returncode, rejected)
    # calibrated by default on the --calib-tif year; the tiny model of two training steps cannot tell places
    # apart, so the calibration is refused in the troubleshooting table's words and the bundle left as it was
    assert re.search(rf"UNCALIBRATED: the calibration on map2019.tif failed: .*{NOT_SEPARATED}", proc.stderr), \
        proc.stderr[-2000:]
    assert "likelihood" not in manifest
    for precision in rejected:
        assert re.search(rf"accuracy gate failed.*{precision}", proc.stderr), proc.stderr[-2000:]
        assert not (bundle / f"model.{precision}.onnx").exists()


GST_STATUSES = '; echo "statuses: ${PIPESTATUS[*]}"'  # python's and grep's exit status


def _gstreamer(proc, ws: Path) -> None:
    """Python ran, and grep found the line exactly when this machine's OpenCV has GStreamer (PyPI's wheels
    do not: exit 1, nothing printed, as the README says)."""
    import cv2

    py, grep = re.search(r"statuses: (\d+) (\d+)", proc.stdout).groups()
    has = re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()) is not None
    assert (py, grep) == ("0", "0" if has else "1"), (py, grep, proc.stdout[-500:], proc.stderr[-500:])


def _venv(proc, ws: Path) -> None:
    assert "include-system-site-packages = true" in (ws / "geoloc/pyvenv.cfg").read_text()


# Steps other steps build on (the keys of TABLE)
SUES_DATA = "python -m tools.make_sues200"
EXPORTED = "python -m export runs/myarea/checkpoint.pt"
NO_TRT = ("TensorRT is not installed here", "python3-libnvinfer")  # the troubleshooting table's row
NOT_SEPARATED = "do not separate true from false places"  # the troubleshooting table's row
SUES_ROOT = (("/data/SUES-200-512x512", SUES),)

# README command (its start, as tokens joined by spaces) -> how it is checked; in the order they run
TABLE: dict[str, Run | Skip] = {
    "make demo": Skip("the whole demo (about 10 min); tests/test_demo.py runs its reduced version",
                      _make_dry_run("demo", "tools.demo")),
    "make test": Skip("the test suite itself, which CI runs", _make_dry_run("test", "pytest")),
    "pip install -e .[all]": Skip("an install from PyPI (network)", _extras),
    "pip install -e .[runtime,mavlink,gnss,ann]": Skip("an install from PyPI (network)", _extras),
    SUES_DATA: Run(
        extra=("--frames", "3", "--size", "64"),
        files=(f"{SUES}/satellite-view", f"{SUES}/drone_view_512/0001/150"), output=("images written",)),
    "python -m train --preset sues200": Run(
        subs=SUES_ROOT, extra=_sets(*TINY, "log_every=1", "optim.checkpoint_every_steps=1"),
        needs=(SUES_DATA,), interrupt=("runs/sues150/train.log", "step 1 loss"), rc=(130,),
        output=(r"\b12 locations",), verify=_interrupted),  # README: "20 locations leave 12 for training"
    "torchrun --nproc_per_node=4 -m train --preset sues200-joint": Skip("several GPUs", _parses),
    "python -m train --run-dir runs/sues150 --resume": Run(
        needs=("python -m train --preset sues200",), files=("runs/sues150/DONE",), verify=_resumed),
    "python -m train.evaluate runs/sues150/checkpoint.pt": Run(
        needs=("python -m train --run-dir runs/sues150 --resume",), files=("runs/sues150/eval.json",),
        output=(r"R@1",), verify=_evaluated),
    "python -m tiles describe map2022.tif": Run(output=("CRS", "m/px", "on the ground", "valid")),
    "python -m tiles preview map2022.tif": Run(files=("grid150.png",), output=("2080 tiles",)),
    "python -m tiles view map2019.tif": Run(files=("view.png",), output=("100% on the map",)),
    "python -m train --preset geotiff": Run(
        extra=_sets(*TINY, "data.max_locations=16", "data.altitudes_m=[300]", "optim.max_steps=2",
                    "optim.epochs=1", "sampler.mining_every_epochs=0"),
        files=("runs/myarea/checkpoint.pt", "runs/myarea/DONE", "runs/myarea/eval.json")),
    EXPORTED: Run(
        extra=("--calib-n", "16", "--eval-n", "64", "--stride-frac", "1", "--no-progress"), rc=(0, 3),
        needs=("python -m train --preset geotiff",), verify=_exported,
        files=("bundle/model.onnx", "bundle/manifest.json", "bundle/tiledb/manifest.json")),
    "sudo apt install": Skip("JetPack's apt packages, on a Jetson", _apt_package_is_the_one_the_errors_name),
    "python3 -m venv --system-site-packages ~/geoloc": Run(
        subs=(("~/geoloc", "geoloc"),), extra=("--without-pip",), files=("geoloc/bin/activate",),
        verify=_venv),
    ". ~/geoloc/bin/activate": Run(
        subs=(("~/geoloc", "geoloc"),), shell='&& echo "env: $VIRTUAL_ENV"',
        needs=("python3 -m venv --system-site-packages ~/geoloc",), output=(r"env: \S*/geoloc",)),
    "pip install --no-deps -e .": Skip("an install (pip fetches the build backend: network)", _core_is_numpy),
    "pip install numpy>=1.22,<2": Skip("an install from PyPI (network); tests/test_readme_install.py checks it",
                                       _jetson_packages),
    "python -c import cv2;": Run(shell=GST_STATUSES, output=(r"statuses: \d+ \d+",), verify=_gstreamer),
    "python -m export --bundle bundle --trt": Run(rc=(2,), needs=(EXPORTED,), output=NO_TRT,
                                                  unless=_no_tensorrt_here),
    "python -m runtime serve --bundle bundle --db bundle/tiledb --backend tensorrt": Run(
        subs=(("/var/log/geoloc/", "log/"),), rc=(2,), needs=(EXPORTED,), output=NO_TRT,
        unless=_no_tensorrt_here),
    "python -m runtime serve --bundle bundle --db bundle/tiledb --source 0": Skip(
        "a camera and an autopilot (tests/test_camera_chain.py and tests/test_attitude_telemetry.py fly the same "
        "chain and telemetry)", _parses),
    "python -m runtime replay sues200": Run(
        subs=SUES_ROOT, needs=(EXPORTED, SUES_DATA), output=(r"R@1",),
        files=("runs/replay_sues200/replay_sues200.json", "runs/replay_sues200/replay_sues200.csv",
               "runs/replay_sues200/sues200_r1.png")),
    "python -m runtime replay geotiff": Run(
        extra=("--max-frames", "3"), needs=(EXPORTED,), output=(r"300 \|\s+3 \|",),
        files=("runs/replay_geotiff/replay_geotiff.json", "runs/replay_geotiff/replay_geotiff_summary.csv",
               "runs/replay_geotiff/track_150m.png")),
}


def _matches(key: str, cmd: Command) -> bool:
    return cmd.text == key or cmd.text.startswith(key + " ")


def _command(key: str) -> Command:
    hits = [c for c in FENCED if _matches(key, c)]
    assert len(hits) == 1, f"TABLE entry {key!r} matches {len(hits)} README commands (see the coverage test)"
    return hits[0]


def _coverage_problems(commands: list[Command]) -> list[str]:
    problems = []
    for cmd in commands:
        keys = [k for k in TABLE if _matches(k, cmd)]
        if len(keys) != 1:
            problems.append(f"README line {cmd.line}: {cmd.text[:80]!r} matches {keys or 'no entry'}: "
                            "give it one entry in TABLE in tests/test_readme.py (run it with small settings, "
                            "or skip it with the reason)")
    return problems + [f"TABLE entry {k!r} matches no README command: update or remove it"
                       for k in TABLE if not any(_matches(k, c) for c in commands)]


def test_every_readme_command_has_an_entry():
    assert len(FENCED) >= 20, "the README's fenced shell blocks were not found"
    problems = _coverage_problems(FENCED)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_drift():
    """A new README command, an option the code does not have, a missing required argument: each is caught."""
    block = ("```bash\npython -m tiles describe a.tif \\\n  --json   # comment\n"
             "cd x && python -m tiles new\n```\n")
    cmds = fenced_commands(block)
    assert [c.tokens for c in cmds] == [("python", "-m", "tiles", "describe", "a.tif", "--json"), ("cd", "x"),
                                        ("python", "-m", "tiles", "new")]
    assert any("'cd x' matches no entry" in p for p in _coverage_problems(FENCED + cmds[1:2]))
    argv = ["serve", "--bundle", "b", "--altitude-m", "1", "--no-such"]
    assert unknown_options("runtime", argv) == ["--no-such"]
    with pytest.raises(AssertionError, match="required"):
        parse_command("tiles", ["preview", "a.tif"])


def test_every_module_the_readme_runs_imports():
    names = {python_module(c.tokens)[0] for c in FENCED + INLINE if python_module(c.tokens)}
    assert {"train", "train.evaluate", "export", "runtime", "tiles", "tools.make_sues200"} <= names
    for name in names:
        if name.split(".")[0] in PROJECT:
            assert callable(module_main(name)), name
        else:  # pytest, venv: their __main__ runs when imported
            assert importlib.util.find_spec(name), name


def test_every_option_a_readme_command_spells_is_accepted():
    from train.config import apply_overrides, preset

    problems = []
    for cmd in FENCED + INLINE:
        found = python_module(cmd.tokens)
        if found is None:
            continue
        name, argv = found
        if name == "pytest":
            marks = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
            declared = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
            problems += [f"line {cmd.line}: pytest marker {m!r} is not declared"
                         for m in marks if m not in declared]
            continue
        if name.split(".")[0] not in PROJECT:  # venv: run for real in the table
            continue
        problems += [f"line {cmd.line}: `python -m {name}` has no option {o}"
                     for o in unknown_options(name, argv)]
        if not cmd.fenced:  # prose mentions are often partial: options only
            continue
        try:
            ns = parse_command(name, argv)
        except AssertionError as e:
            problems.append(f"line {cmd.line}: {e}")
            continue
        if name == "train" and not ns.resume or name == "train.evaluate" and ns.preset:
            try:  # --set keys and values are checked against the config tree
                apply_overrides(preset(ns.preset or "sues200"), list(ns.set or []))
            except ValueError as e:
                problems.append(f"line {cmd.line}: {e}")
    assert not problems, "\n".join(problems)


# The commands whose options the prose may name, with the arguments that make their parsers complete
COMMANDS = {"train": [], "train.evaluate": [], "export": [], "runtime": ["replay"], "tiles": [],
            "tools.demo": [], "tools.make_sues200": []}
FOREIGN_OPTIONS = {"--system-site-packages"}  # python -m venv's, in the Jetson instructions


def test_every_option_the_prose_names_exists():
    """An option named in the text (`--altitude-from`, `--int8-full-range`) belongs to one of the commands."""
    from torch.distributed.run import get_args_parser

    known = set().union(*(option_strings(n, a) for n, a in COMMANDS.items()), FOREIGN_OPTIONS)
    known |= {s for a in get_args_parser()._actions for s in a.option_strings}  # torchrun's
    named = prose_options(README)
    assert len(named) > 30, "the prose's options were not found"
    unknown = {o: lines for o, lines in named.items() if o not in known}
    assert not unknown, f"README names options no command has (option: lines): {unknown}"


def test_serve_config_keys_are_the_options_with_underscores():
    """README: "`--config serve.toml` takes any option (a `[serve]` table; names as the options with `_`)"."""
    from runtime.config import FIELD_NAMES

    serve = subparsers(command_parser("runtime", ["serve"]))["serve"]
    options = [next(s for s in a.option_strings if s.startswith("--")) for a in serve._actions
               if a.dest not in ("help", "config") and a.option_strings and not a.dest.startswith("removed_")]
    assert len(options) > 30
    missing = [o for o in options if o[2:].replace("-", "_") not in FIELD_NAMES]
    assert not missing, f"serve options whose `_` form is no --config key: {missing}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("readme")
    naip = naip_files()
    if not set(MAPS.values()) <= set(naip):
        pytest.skip("bundled NAIP rasters missing")
    for name, year in MAPS.items():
        (ws / name).symlink_to(naip[year])
    (ws / "data").symlink_to(REPO / "data")
    return ws


_DONE: dict[str, bool] = {}  # the steps that passed, for the steps that build on them


@pytest.mark.parametrize("key", list(TABLE))
def test_readme_command(key, workspace):
    entry, cmd = TABLE[key], _command(key)
    if isinstance(entry, Skip):
        entry.check(cmd)
        pytest.skip(f"README line {cmd.line} not run here: {entry.reason}")
    reason = entry.unless() if entry.unless else None
    if reason:
        pytest.skip(reason)
    for need in entry.needs:
        if not _DONE.get(need):
            pytest.skip(f"needs the README step {need!r}, which did not pass")
    proc = execute(cmd, entry, workspace)
    said = proc.stdout + proc.stderr
    assert proc.returncode in entry.rc, f"README line {cmd.line}: exit {proc.returncode}\n{said[-3000:]}"
    missing = [f for f in entry.files if not (workspace / f).exists()]
    assert not missing, f"README line {cmd.line}: {missing} not written\n{said[-2000:]}"
    for pattern in entry.output:
        assert re.search(pattern, said), \
            f"README line {cmd.line}: {pattern!r} not in the output\n{said[-2000:]}"
    if entry.verify:
        entry.verify(proc, workspace)
    _DONE[key] = True


def test_the_gstreamer_check_tells_yes_from_no():
    """The README's grep, fed OpenCV's two answers: it passes JetPack's build and fails PyPI's."""
    cmd = _command("python -c import cv2;")
    grep = Command(cmd.tokens[cmd.tokens.index("|") + 1:], cmd.line, True).shell()
    for info, rc in (("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n", 0),
                     ("  Video I/O:\n    GStreamer:                   NO\n", 1)):
        proc = subprocess.run(["bash", "-c", grep], input=info, capture_output=True, text=True, timeout=10)
        assert proc.returncode == rc, (info, proc.returncode, proc.stderr)
