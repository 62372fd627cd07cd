"""The CPU-kernel pins of common.kernels: set before torch loads, obeyed by torch, a user's own kept."""

import json
import os
import subprocess
import sys

import pytest

from common.kernels import AVX2_PINS, cpu_has_avx2, pin_cpu_kernels

PROBE = ("import json, os; from common.kernels import pin_cpu_kernels; p = pin_cpu_kernels(); import torch; "
         "print(json.dumps({'pinned': p, 'cap': torch.backends.cpu.get_cpu_capability()}))")


def _probe(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in AVX2_PINS}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu_has_avx2(), reason="not an x86 CPU with AVX2: nothing is pinned")
def test_pins_reach_torch_and_keep_the_users_own():
    got = _probe({})
    assert got["pinned"] == AVX2_PINS
    assert got["cap"] == "AVX2"  # an AVX-512 CPU would say AVX512 unpinned
    own = _probe({"ATEN_CPU_CAPABILITY": "default"})
    assert "ATEN_CPU_CAPABILITY" not in own["pinned"] and own["cap"] == "DEFAULT"


def test_nothing_pinned_once_torch_is_loaded(caplog):
    pytest.importorskip("torch")
    env = {}
    assert pin_cpu_kernels(env) == {} and env == {}
    assert "already imported" in caplog.text


def test_no_avx2_in_cpuinfo_means_no_pin(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse sse2 sse4_1\n")
    assert not cpu_has_avx2(info)
    info.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    assert cpu_has_avx2(info) == (__import__("platform").machine().lower() in ("x86_64", "amd64"))
