"""``python -m runtime serve ...`` (the onboard service) and ``python -m runtime replay ...`` (offline)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass

from common.cli import add_dataclass_options, run_main, setup_logging
from common.options import option, shared


@dataclass
class ConfigFileOption:
    config: str | None = option(None, "settings file (.json or .toml) of serve; command-line options override it")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve``: one per :class:`runtime.config.ServiceConfig` field (the Localizer's knobs
    with the same names as in ``replay``)."""
    from runtime.config import ServiceConfig
    from runtime.localisation.config import LocalizerConfig, add_localizer_options

    add_dataclass_options(p, ConfigFileOption)
    chain = {f.name for f in dataclasses.fields(LocalizerConfig)}
    add_dataclass_options(p, ServiceConfig, skip=chain)
    add_localizer_options(p)


def serve(args) -> int:
    from runtime.config import build_config, load_config_file
    from runtime.service import Service

    file_values = load_config_file(args.config) if args.config else {}
    cfg = build_config(file_values, vars(args))
    service = Service(cfg)
    signal.signal(signal.SIGINT, service.stop)
    signal.signal(signal.SIGTERM, service.stop)
    return service.run()


@dataclass
class RuntimeOptions:
    verbose: bool = shared("verbose")


def build_parser(replay: bool = True) -> argparse.ArgumentParser:
    """The parser of ``python -m runtime`` (``replay``: with the replay's options, whose imports serve does
    not need)."""
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    add_dataclass_options(parser, RuntimeOptions)
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve", help="run the onboard service on a frame source"))
    from runtime.check import add_check_arguments

    add_check_arguments(sub.add_parser("check", help="verify a tile database (and bundle) and measure its memory"))
    replay_parser = sub.add_parser("replay", help="replay recorded flights offline and report metrics")
    if replay:
        from runtime.replay import cli as replay_mod  # the replay engineer's module; serve works without it

        replay_mod.add_replay_arguments(replay_parser)
    return parser


def main(argv=None) -> int:
    wants_replay = "replay" in (argv if argv is not None else sys.argv[1:])
    parser = build_parser(replay=wants_replay)
    args = parser.parse_args(argv)
    setup_logging(bool(args.verbose))
    if args.command == "serve":
        # One query at a time: multi-threaded BLAS only fights the engine and capture threads for the cores
        # (measured: search p50 11 ms -> 0.4 ms on 2 cores). Set before numpy is imported; env overrides.
        if "numpy" not in sys.modules:
            from runtime.threads import BLAS_ENV

            for name in BLAS_ENV:
                os.environ.setdefault(name, "1")
        return run_main(serve, args, logger_name="runtime")
    if args.command == "check":
        from runtime.check import check

        return run_main(check, args, logger_name="runtime")
    from runtime.replay import cli as replay_mod

    return run_main(replay_mod.run_replay, args, logger_name="runtime.replay")


if __name__ == "__main__":
    sys.exit(main())
