"""The options several commands share, each defined once: one name, one default, one help text, one check.

A config dataclass of any package declares a shared knob as ``hfov_deg: float | None = shared("hfov_deg")``
and its command line gets it through :func:`common.cli.add_dataclass_options`, so ``--hfov-deg`` reads
the same, defaults the same and is range-checked the same (``common.validate``) in ``tiles``, ``export``,
``runtime serve``/``replay`` and the tools (``tests/test_cli_options.py`` builds every command's parser
and holds them to it). An option only one command has is declared in that command's own dataclass with
:func:`option`.

Where commands need different values of one quantity, the default is None and each says what None means
in the one help text (the field of view: the database's when flying, 60 degrees when cutting one).

Standard library only (with :mod:`common.validate`): every package may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common import validate

DEFAULT_HFOV_DEG = 60.0
DEFAULT_ALTITUDES_M = (150.0, 200.0, 250.0, 300.0)
PRECISIONS = ("auto", "fp32", "fp16", "int8")
BACKENDS = ("auto", "onnxruntime", "tensorrt")


def option(default, help: str, **meta) -> dataclasses.Field:
    """A config field with its command-line metadata (``help``, ``aliases``, ``choices``, ``metavar``,
    ``check``, ``required``); a list default is copied for each instance."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


_whole = validate.int_rule

SHARED: dict[str, dict] = {
    # the camera and the map's layers
    "hfov_deg": dict(default=None, help="camera horizontal field of view, degrees (default: what the tile database "
                                        f"was cut for; {DEFAULT_HFOV_DEG:g} where there is none)",
                     aliases=("--hfov",), check=validate.hfov_deg),
    "altitudes_m": dict(default=None, help="flight heights above ground, metres (default: every layer of the tile "
                                           "database; " + " ".join(f"{a:g}" for a in DEFAULT_ALTITUDES_M)
                                           + " where there is none)",
                        aliases=("--altitudes",), check=validate.altitude_m),
    "altitude_m": dict(default=None, help="flight height above ground, metres (serve: picks the layer; the fallback "
                                          "while --altitude-from is stale)",
                       aliases=("--altitude",), check=validate.altitude_m),
    "stride_frac": dict(default=0.5, help="tile stride as a fraction of the footprint",
                        check=validate.fraction_rule()),
    "tilt_deg": dict(default=0.0, help="camera tilt from nadir, degrees", aliases=("--tilt",), check=validate.tilt_deg),
    "photometric": dict(default=None, help="strength of the appearance changes of rendered frames (0 = none, 1 = "
                                           "another camera on another day; default: none)",
                        check=validate.range_rule(0.0, 2.0, hint="0 = none, 1 = another camera on another day")),
    "seed": dict(default=0, help="random seed", check=_whole(None)),
    # the engine
    "precision": dict(default="auto", help="engine precision (auto: fp16 on a GPU, fp32 on the CPU, "
                                           "the nearest the bundle holds)", choices=PRECISIONS),
    "backend": dict(default="auto", help="engine backend (auto: TensorRT when the bundle has an engine and "
                                         "tensorrt is installed, else ONNX Runtime)", choices=BACKENDS),
    "threads": dict(default=None, help="ONNX Runtime intra-op threads (default: its own choice; serve with its "
                                         "pipeline: every core but one, the other left to the fusion)", check=_whole(1)),
    # the model
    "model_name": dict(default=None, help="timm model name (an official Sample4Geo state dict needs it; default: the "
                                          "checkpoint's, or the preset's)", aliases=("--model",)),
    "batch_size": dict(default=None, help="images per batch (training: distinct locations per step and process, the "
                                          "global batch is this x the processes; default: the preset's, or 32)",
                       check=_whole(1)),
    "imagery_px": dict(default=512, help="map imagery for registration at the resolution of a frame this many pixels "
                                         "wide at the lowest altitude (never finer than the map)", check=_whole(16)),
    # every command
    "overwrite": dict(default=False, help="replace what the output folder holds (without it an existing result is "
                                          "never overwritten)"),
    "verbose": dict(default=False, help="debug logging", aliases=("-v",)),
    "progress": dict(default=True, help="show progress bars (--no-progress: none, e.g. in logs)"),
    "set": dict(default=[], help="override a setting of the command's config tree, KEY=VALUE, e.g. optim.lr=1e-4 "
                                 "(repeatable; the keys: see the command's description)", metavar="KEY=VALUE",
                append=True),
    # artifacts
    "bundle": dict(default=None, help="model bundle folder (written by python -m export)"),
    "db": dict(default=None, help="tile database folder (written by python -m export --tiles; a gallery database "
                                  "for replay sues200)"),
    "max_frames": dict(default=None, help="stop after N frames (of each flight, in a replay)", check=_whole(1)),
    "dem": dict(default=None, help="DEM GeoTIFF of ground heights above mean sea level, any CRS (export: stored in the "
                                   "tile database so the runtime knows the ground's height, flat ground without it; "
                                   "a replay: the flight's map draped on it)"),
    "map": dict(default=None, help="the reference GeoTIFF: the map the tile database and its imagery were cut from"),
    "flight_raster": dict(default=None, help="GeoTIFF the frames are rendered from (another date of the map's area; "
                                             "default: --map)"),
    "query": dict(default=None, help="GeoTIFF the query frames are rendered from (another date of the map's area)"),
    "heading_deg": dict(default=None, help="compass heading the image top faces, degrees clockwise from north (serve: "
                                           "fixed, e.g. 0 for a gimbal locked north, the fallback while the "
                                           "autopilot's heading is stale; a rendered view: default 0)",
                        aliases=("--heading",), metavar="DEG", check=validate.heading_deg),
    "compass": dict(default=True, help="frames come with the compass heading (--no-compass: a drone without one; the "
                                       "heading then comes from registration)"),
    "compass_sigma": dict(default=3.0, help="compass noise of the rendered frames, degrees (1 sigma)",
                          check=validate.range_rule(0.0, 180.0)),
    "size": dict(default=512, help="side of the rendered image in pixels", check=_whole(16, 8192)),
    "json": dict(default=False, help="print one JSON object on stdout"),
    "preset": dict(default=None, help="named config of python -m train (train: default sues200; evaluate: instead of "
                                      "the checkpoint's own)"),
    "resume": dict(default=False, help="continue where the last run in the output folder stopped (train: from its "
                                       "checkpoint; a benchmark: its finished rows)"),
    # the sizes of an experiment: each tool's own default, stated in its description
    "frames": dict(default=None, help="frames per flight, or of the generated video (default: see the description)",
                   check=_whole(1)),
    "frame_px": dict(default=None, help="side of the generated frames in pixels (default: see the description)",
                     check=_whole(16, 8192)),
    "n": dict(default=None, help="how many samples are measured: frames per altitude, tiles per timed run "
                                 "(default: see the description)", check=_whole(1)),
    "runs": dict(default=None, help="timed repetitions (default: see the description)", check=_whole(1)),
    "calib_n": dict(default=None, help="INT8 calibration images (default: 128 for an export; the benchmarks use "
                                       "fewer, see their description)", check=_whole(1)),
    "eval_n": dict(default=256, help="held-out queries per altitude of the FP16/INT8 accuracy gate", check=_whole(1)),
    "work": dict(default=None, help="folder for the inputs the tool generates (default: runs/<the tool's name>)"),
}


def shared(name: str, *, required: bool = False) -> dataclasses.Field:
    """The one definition of the shared option ``name`` as a fresh dataclass field (``required``: a command
    that cannot run without it says so at parse)."""
    spec = dict(SHARED[name])
    if required:
        spec["required"] = True
    return option(spec.pop("default"), spec.pop("help"), **spec)


@dataclass
class EngineOptions:
    """How the model runs: the same three options in serve, replay and the tools."""

    precision: str = shared("precision")
    backend: str = shared("backend")
    threads: int | None = shared("threads")
