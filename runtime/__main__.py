"""``python -m runtime serve ...`` (the onboard service) and ``python -m runtime replay ...`` (offline)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from common.cli import run_main, setup_logging


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve``: one per :class:`runtime.config.ServiceConfig` field (the Localizer's knobs
    with the same names as in ``replay``)."""
    from common.cli import add_dataclass_options
    from runtime.config import ServiceConfig
    from runtime.localisation.config import LocalizerConfig, add_localizer_options

    p.add_argument("--config", help="settings file (.json or .toml); command-line options override it")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve", help="run the onboard service on a frame source"))
    from runtime.check import add_check_arguments

    add_check_arguments(sub.add_parser("check", help="verify a tile database (and bundle) and measure its memory"))
    replay_parser = sub.add_parser("replay", help="replay recorded flights offline and report metrics")
    replay_mod = None
    wants_replay = "replay" in (argv if argv is not None else sys.argv[1:])
    if wants_replay:
        from runtime.replay import cli as replay_mod  # the replay engineer's module; serve works without it

        replay_mod.add_replay_arguments(replay_parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
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
    return run_main(replay_mod.run_replay, args, logger_name="runtime.replay")


if __name__ == "__main__":
    sys.exit(main())
