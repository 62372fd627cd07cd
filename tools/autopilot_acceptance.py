"""Run the autopilots' checkers on the recordings of ``python -m runtime replay geotiff --record-autopilot``.

For every ``autopilot_<alt>m`` folder under the given replay folders: ``px4-gps/check.py`` replays
``gnss_ubx.cap`` and ``gnss_nmea.cap`` (``--in-air``, PX4's default EKF2 parameters) and
``ardupilot-gps/check.py`` replays ``mavlink.tlog`` (ArduPilot's defaults) and ``mavlink_odometry.tlog``
(``--viso-type 1``). One row per flight, and every checker summary in ``--out``::

    python -m tools.autopilot_acceptance REPLAY_OUT [REPLAY_OUT ...] [--shared ../shared] [--out accept.json]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli import options_parser, parse_options
from common.options import option

REPO = Path(__file__).resolve().parents[1]


def _checker(shared: Path, which: str, args) -> tuple[dict, list[dict]]:
    script = shared / which / "check.py"
    p = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=600)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"{script} {args}: no output: {p.stderr[-500:]}")
    return lines[-1], lines[:-1]


def _capture_end_s(path: Path) -> float:
    d, i, times = path.read_bytes(), 11, []
    while i + 12 <= len(d):
        t, n = struct.unpack_from("<QI", d, i)
        times.append(t)
        i += 12 + n
    return (times[-1] - times[0]) / 1e6 if times else 0.0


def check_px4(shared: Path, cap: Path, protocol: str) -> dict:
    s, lines = _checker(shared, "px4-gps", ["--protocol", protocol, "--replay", cap, "--in-air"])
    end = _capture_end_s(cap)
    first_fix = next((x["t"] for x in lines if x.get("type") == "sensor_gps" and x["fix_type"] >= 3), None)
    ekf = s["ekf2"]["default"]
    use = ekf["use_after_s"]
    return {"would_use_gnss": ekf["would_use_gnss"], "use_after_first_fix_s":
            round(use - first_fix, 2) if use is not None and first_fix is not None else None,
            "rate_hz": s["rate_hz"], "max_gap_s": s["max_gap_s"],
            "reconfigures_before_end": sum(1 for x in lines if x.get("event") == "receive_timeout_reconfigure"
                                           and x["t"] < end),
            "eph": s["ranges"]["eph"], "s_variance": s["ranges"]["s_variance"], "fail_counts": ekf["fail_counts"],
            "cfg_valset": s["configure"]["cfg_messages"].get("CFG-VALSET")}


def check_ardupilot(shared: Path, tlog: Path, *extra) -> dict:
    s, _ = _checker(shared, "ardupilot-gps", [tlog, "--quiet", *extra])
    return {"status": s["status"], "rules": {r["rule"]: {"status": r["status"], "value": r["value"]}
                                             for r in s["rules"]}}


@dataclass
class Options:
    replays: list[str] = option([], "--out folders of replays run with --record-autopilot", positional=True,
                                nargs="+")
    shared: str | None = option(None, "the folder holding px4-gps/ and ardupilot-gps/ (default: ../shared beside "
                                      "the checkout, or one level up)")
    out: str | None = option(None, "results JSON: every checker's summary")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__.splitlines()[0])


def main(argv=None) -> int:
    a = parse_options(build_parser(), argv, Options)
    shared = Path(a.shared) if a.shared else next(
        (p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if (p / "px4-gps").is_dir()), None)
    if shared is None or not (shared / "px4-gps" / "check.py").is_file():
        raise SystemExit("the checkers are not found: give --shared DIR (holding px4-gps/ and ardupilot-gps/)")
    results = {}
    print(f"{'flight':<34} | {'PX4 UBX use s':>13} {'Hz':>5} {'reconf':>6} | {'NMEA use s':>10} {'Hz':>5} | "
          f"{'ArduPilot':>9} {'ExtNav':>7} | failing")
    for folder in sorted(f for r in a.replays for f in Path(r).glob("autopilot_*m")):
        name = f"{folder.parent.name}/{folder.name}"
        ubx = check_px4(shared, folder / "gnss_ubx.cap", "ubx")
        nmea = check_px4(shared, folder / "gnss_nmea.cap", "nmea")
        gps = check_ardupilot(shared, folder / "mavlink.tlog")
        odo = check_ardupilot(shared, folder / "mavlink_odometry.tlog", "--viso-type", "1")
        results[name] = {"px4_ubx": ubx, "px4_nmea": nmea, "ardupilot_gps_input": gps, "ardupilot_odometry": odo}
        failing = sorted({k for k, r in gps["rules"].items() if r["status"] != "pass" and k != "latency"}
                         | {f"extnav:{k}" for k, r in odo["rules"].items() if r["status"] not in ("pass", "n/a")}
                         | {f"px4:{k}" for k in ubx["fail_counts"]})

        def use(x):
            return f"{x['use_after_first_fix_s']:.1f}" if x["would_use_gnss"] else "never"
        print(f"{name:<34} | {use(ubx):>13} {ubx['rate_hz']:>5.2f} {ubx['reconfigures_before_end']:>6} | "
              f"{use(nmea):>10} {nmea['rate_hz']:>5.2f} | {gps['status']:>9} {odo['status']:>7} | "
              f"{', '.join(failing)}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
