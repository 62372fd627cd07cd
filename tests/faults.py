"""Helpers of the fault-injection suites (tests/test_faults_*.py): run a command as a user runs it and
read its verdict: the exit status and the one line that says what went wrong."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tools.toy_assets import REPO


def run(module: str, *args, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository, its output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kw)


def run_python(code: str, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -c code args...`` from the repository, its output captured."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _default_sigint() -> None:
    """A command started from a background job inherits SIGINT ignored (Python then never raises
    KeyboardInterrupt): give it the default, as a terminal's Ctrl-C finds it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def popen(module: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def error_line(stderr: str) -> str:
    """The one line a failed command printed as its error (asserted: exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if re.search(r" ERROR[ :]|: error: ", ln)]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def unwritable(tmp_path: Path) -> Path:
    """A folder in which this process may not create anything: a read-only folder, or for root (who may
    write anywhere in a normal file system) a path under /sys, where even root may not create files."""
    if os.geteuid() == 0:
        return Path("/sys")
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size, same name): a bad copy or a failing disk."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
