"""The autopilots' own rules, run as they are: ``px4-gps/check.py`` (PX4's gps module, u-blox and NMEA drivers,
EKF2's GNSS checks) and ``ardupilot-gps/check.py`` (AP_GPS_MAV, AP_GPS health, EKF3's GPS checks, VisualOdom),
from the shared folder beside the checkout (``../shared``, or one level up from a worktree). Tests that need
them skip when they are absent (CI without the shared folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared")
               if (p / "px4-gps" / "check.py").is_file() and (p / "ardupilot-gps" / "check.py").is_file()), None)
needs_checkers = pytest.mark.skipif(SHARED is None, reason="the autopilot checkers (../shared/px4-gps, "
                                    "../shared/ardupilot-gps) are not beside this checkout")


def _run(script: Path, args, timeout: float) -> tuple[dict, list[dict], int]:
    p = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise AssertionError(f"{script.name} {args}: no output (exit {p.returncode}): {p.stderr[-2000:]}")
    return lines[-1], lines[:-1], p.returncode


def px4(args, timeout: float = 120) -> tuple[dict, list[dict], int]:
    """(summary, other lines, exit code) of ``px4-gps/check.py ARGS``."""
    return _run(SHARED / "px4-gps" / "check.py", args, timeout)


def ardupilot(args, timeout: float = 120) -> tuple[dict, list[dict], int]:
    """(summary, event lines, exit code) of ``ardupilot-gps/check.py ARGS``."""
    return _run(SHARED / "ardupilot-gps" / "check.py", args, timeout)


def rules(summary: dict) -> dict[str, dict]:
    """ArduPilot's summary rules by name."""
    return {r["rule"]: r for r in summary["rules"]}


def reconfigures_before(summary: dict, lines: list[dict], end_s: float) -> int:
    """PX4's receive timeouts (a reconfigure) before ``end_s``: a capture's end times the driver out anyway."""
    return sum(1 for x in lines if x.get("event") == "receive_timeout_reconfigure" and x["t"] < end_s)
