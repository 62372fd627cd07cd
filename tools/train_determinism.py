"""Does training give the same weights twice, and what makes two machines differ?

    python -m tools.train_determinism [--steps 6] [--out result.json]

Trains the demo's preset for a few steps (96 locations, no mining, no evaluation) in a fresh process per
variant and hashes the weights (sha256 of the state dict's tensors in key order). Variants: the command
twice as it is; each of the CPU-kernel choices that differ between machines forced to another instruction
set (torch's ATen kernels, oneDNN's convolutions, MKL's products: what an AVX-512 or an older CPU would
run); and the pins of :mod:`common.kernels` (what ``python -m tools.demo`` sets), which on this AVX2 machine
must equal the plain run. Each run is about 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.cli import options_parser, parse_options
from common.kernels import AVX2_PINS
from common.options import option

VARIANTS = {
    "as it is": {},
    "as it is, again": {},
    "ATen kernels without AVX2 (ATEN_CPU_CAPABILITY=default)": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN at SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41)": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL's compatible path (MKL_CBWR=COMPATIBLE)": {"MKL_CBWR": "COMPATIBLE"},
    "pinned to AVX2 (common.kernels)": dict(AVX2_PINS),
}


@dataclass
class Options:
    steps: int = option(6, "training steps per run")
    out: str | None = option(None, "write the result as JSON here")
    child: str | None = option(None, "(internal) train into this folder and print the hash")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(Options, __doc__, "python -m tools.train_determinism")


def train_and_hash(run_dir: str, steps: int) -> dict:
    import torch

    from train.config import apply_overrides, preset
    from train.trainer import train

    cfg = apply_overrides(preset("demo"), ["data.max_locations=96", f"optim.max_steps={steps}", "optim.epochs=1",
                                           "sampler.mining_every_epochs=0", "eval.every_epochs=0"])
    cfg.run_dir = run_dir
    train(cfg, resume=False, overwrite=True, command=["python", "-m", "tools.train_determinism"])
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)["state_dict"]
    h = hashlib.sha256()
    for k in sorted(state):
        if torch.is_tensor(state[k]):
            h.update(state[k].detach().cpu().numpy().tobytes())
    losses = [json.loads(line).get("loss") for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    return {"sha256": h.hexdigest()[:16], "capability": torch.backends.cpu.get_cpu_capability(),
            "losses": [round(v, 6) for v in losses if v is not None]}


def run_variant(env_extra: dict, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in AVX2_PINS}
    env.update(env_extra)
    with tempfile.TemporaryDirectory(prefix="determinism-") as run:
        p = subprocess.run([sys.executable, "-m", "tools.train_determinism", "--child", run, "--steps", str(steps)],
                           env=env, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_options(build_parser(), argv, Options)
    if args.child:
        print(json.dumps(train_and_hash(args.child, args.steps)))
        return 0
    rows = {}
    for name, env in VARIANTS.items():
        rows[name] = dict(run_variant(env, args.steps), env=env)
        print(f"{name:58s} {rows[name]['sha256']}  {rows[name]['capability']:8s} losses {rows[name]['losses']}",
              flush=True)
    base = rows["as it is"]["sha256"]
    result = {"command": "python -m tools.train_determinism", "steps": args.steps, "variants": rows,
              "same_twice": rows["as it is, again"]["sha256"] == base,
              "pinned_equals_plain": rows["pinned to AVX2 (common.kernels)"]["sha256"] == base}
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}))
    if args.out:
        from tiles.io import atomic_write_json

        atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
