"""The same training on every x86 machine: torch's CPU kernels pinned to one instruction set.

Training on a CPU is deterministic on one machine (two runs of the same command give bit-identical weights,
``python -m tools.train_determinism``), but not between machines: torch picks its vectorised kernels (ATen),
its convolutions (oneDNN) and its matrix products (MKL) by the CPU's instruction set, each set sums in
another order, and a few hundred steps turn the last bit into points of R@1 (the demo's held-out R@1 at
300 m was 60.7 on one 2-core machine and 68.0 on another). Pinned to AVX2 (every x86 CPU since 2013 has
it; AVX-512 ones then take the AVX2 path), every such machine computes what this one does.

The pins are environment variables the libraries read once, when torch is imported: :func:`pin_cpu_kernels`
must run before that, and leaves any of them a user set alone. Not pinned: ARM CPUs (other kernels
altogether), GPUs, and ONNX Runtime's kernels (the flights' figures may differ in the last digits).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# ATen's vectorised kernels, oneDNN's convolutions, MKL's conditional numerical reproducibility
AVX2_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def cpu_has_avx2(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True on an x86-64 CPU whose flags list avx2 (False where that cannot be read: nothing is pinned)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " avx2" in line for line in text.splitlines())


def pin_cpu_kernels(environ=None) -> dict:
    """Pin torch's CPU kernels to AVX2 (module docstring); the variables set, {} when nothing was (not an
    AVX2 CPU, torch already imported, or the user set them)."""
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        log.warning("torch is already imported: its CPU kernels are not pinned (results may differ between "
                    "machines in the last bits)")
        return {}
    if not cpu_has_avx2():
        return {}
    pinned = {k: v for k, v in AVX2_PINS.items() if k not in env}
    env.update(pinned)
    return pinned
