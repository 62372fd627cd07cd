"""Soak: `python -m runtime serve` on a looping video for a long time, its resident memory sampled.

The service runs as a user runs it (a subprocess of the real command line, every frame processed),
``VmRSS`` is read from ``/proc/PID/status`` every ``--sample-s`` seconds, then SIGTERM ends it and the
JSON lines file is checked: every line strict JSON, one fix line per processed frame plus the summary
(nothing lost, nothing half-written). The memory growth is the slope of a least-squares line through the
samples after ``--warmup-s`` (MB per hour); the curve goes to a PNG.

    python tools/bench_soak.py --minutes 60 --work runs/soak --out docs/results/soak.json --plot docs/results/soak.png

Model, database and video as in tools/bench_runtime.py (``tf_efficientnet_lite0`` with random weights,
224 px, a database from the 2020 NAIP image, a video of NAIP crops).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import validate  # noqa: E402 (after the path above)
from common.cli import options_parser, parse_options  # noqa: E402 (after the path above)
from common.options import option, shared  # noqa: E402 (after the path above)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def assets(work: Path, frames: int, frame_px: int) -> tuple[Path, Path, Path]:
    from runtime.engines.engine import load_engine
    from tools.toy_assets import make_bundle, make_tile_db, naip_files, write_flight_video

    work.mkdir(parents=True, exist_ok=True)
    bundle, db = work / "bundle", work / "db"
    video = work / f"flight_{frames}_{frame_px}.avi"
    raster = naip_files()[2020]
    if not (bundle / "manifest.json").exists():
        make_bundle(bundle, model_name="tf_efficientnet_lite0", input_px=224)
    if not (db / "manifest.json").exists():
        make_tile_db(load_engine(bundle), db, raster, tile_px=64, stride_px=32, altitudes_m=(150.0,))
    if not video.exists():
        write_flight_video(video, raster, n_frames=frames, fps=10, out_px=frame_px)
    return bundle, db, video


def check_jsonl(path: Path) -> dict:
    """Every line strict JSON; counts of fix lines and the summary's processed count."""
    fixes, summary, bad = 0, None, 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines():
        try:
            rec = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError:
            bad += 1
            continue
        if rec.get("type") == "fix":
            fixes += 1
        elif rec.get("type") == "summary":
            summary = rec
    processed = None if summary is None else summary["health"]["counters"].get("frames_processed")
    return {"bytes": len(data), "ends_with_newline": data.endswith(b"\n"), "fix_lines": fixes,
            "bad_lines": bad, "summary": summary is not None, "frames_processed": processed}


def soak(bundle: Path, db: Path, video: Path, out_jsonl: Path, seconds: float, sample_s: float) -> dict:
    if out_jsonl.exists():
        out_jsonl.unlink()
    cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), "--db", str(db), "--source",
           str(video), "--loop", "--altitude", "150", "--jsonl", str(out_jsonl), "--no-drop-frames",
           "--health-log-s", "60"]
    log = open(out_jsonl.with_suffix(".log"), "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    samples = []
    try:
        while time.monotonic() - t0 < seconds and proc.poll() is None:
            r = rss_mb(proc.pid)
            if r is not None:
                samples.append((round(time.monotonic() - t0, 1), round(r, 1)))
            time.sleep(sample_s)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    return {"command": " ".join(cmd), "exit_code": code, "seconds": round(time.monotonic() - t0, 1),
            "samples": samples, "jsonl": check_jsonl(out_jsonl)}


def growth(samples, warmup_s: float) -> dict:
    t = np.array([s[0] for s in samples if s[0] >= warmup_s])
    m = np.array([s[1] for s in samples if s[0] >= warmup_s])
    if len(t) < 3:
        return {}
    slope, _ = np.polyfit(t / 3600.0, m, 1)
    return {"rss_after_warmup_mb": float(m[0]), "rss_end_mb": float(m[-1]), "rss_max_mb": float(m.max()),
            "slope_mb_per_hour": round(float(slope), 2), "n_samples": int(len(t))}


def plot(samples, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s[0] / 60 for s in samples], [s[1] for s in samples], lw=1.2)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass
class Options:
    """Defaults of the shared sizes here: --frames 200 (of the looping video), --frame-px 480."""

    work: str | None = shared("work")
    minutes: float = option(60.0, "how long the service runs", check=validate.positive_rule("minutes"))
    sample_s: float = option(5.0, "seconds between memory samples", check=validate.positive_rule("s"))
    warmup_s: float = option(60.0, "seconds before the memory slope is measured",
                             check=validate.range_rule(0.0, None))
    frames: int | None = shared("frames")
    frame_px: int | None = shared("frame_px")
    out: str | None = option(None, "results JSON")
    plot: str | None = option(None, "RSS curve PNG")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__)


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options, work="runs/soak", frames=200, frame_px=480)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work)
    bundle, db, video = assets(work, args.frames, args.frame_px)
    res = soak(bundle, db, video, work / "soak.jsonl", args.minutes * 60, args.sample_s)
    res["growth"] = growth(res["samples"], args.warmup_s)
    res["load_average"] = os.getloadavg()
    j = res["jsonl"]
    res["nothing_lost"] = bool(j["summary"] and j["bad_lines"] == 0 and j["ends_with_newline"]
                               and j["fix_lines"] == j["frames_processed"])
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.plot:
        plot(res["samples"], Path(args.plot), f"serve soak, {args.minutes:g} min, {j['fix_lines']} frames: "
             f"{res['growth'].get('slope_mb_per_hour', float('nan')):+.1f} MB/h after warm-up")
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))
    return 0 if res["nothing_lost"] and res["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
