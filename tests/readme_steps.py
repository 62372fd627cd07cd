"""Test helper: one README step run as a user runs it (tests/test_readme.py's table entries).

``Run`` runs a README command in a workspace folder with a few words replaced and small settings appended;
``Skip`` names why a command cannot run here and the check that still does. ``execute(cmd, run, ws)`` runs
the command with this interpreter (``python`` = ``sys.executable``, its folder first on PATH) and the
worktree's code on PYTHONPATH; caches go under the workspace.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.readme_blocks import Command

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """Run the README command here; ``verify(proc, ws)`` checks what the fixed fields cannot say."""

    subs: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()
    rc: tuple[int, ...] = (0,)
    files: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    shell: str | None = None  # run through bash with this appended (pipelines, `.`)
    interrupt: tuple[str, str] | None = None  # (log file, text): SIGINT (Ctrl-C) once the text is there
    verify: Callable | None = None
    unless: Callable[[], str | None] | None = None  # a reason this machine cannot give the documented outcome


@dataclass(frozen=True)
class Skip:
    """Not run here for ``reason``; ``check(cmd)`` still runs."""

    reason: str
    check: Callable[[Command], None]


def _env(ws: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, XDG_CACHE_HOME=str(ws / ".cache"), MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _argv(cmd: Command, entry: Run) -> list[str] | str:
    tokens = list(cmd.tokens)
    for old, new in entry.subs:
        tokens = [t.replace(old, new) for t in tokens]
    if entry.shell is not None:
        return " ".join([Command(tuple(tokens), cmd.line, True).shell(), *entry.extra, entry.shell])
    if re.fullmatch(r"python3?", tokens[0]):
        tokens[0] = sys.executable
    return tokens + list(entry.extra)


def execute(cmd: Command, entry: Run, ws: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` as ``entry`` says in ``ws`` (a SIGINT once ``entry.interrupt``'s text is logged)."""
    argv = _argv(cmd, entry)
    kw = dict(cwd=ws, env=_env(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if entry.shell is not None:
        argv = ["bash", "-c", argv]
    if entry.interrupt is None:
        return subprocess.run(argv, timeout=300, **kw)
    log, text = ws / entry.interrupt[0], entry.interrupt[1]
    proc = subprocess.Popen(argv, **kw)
    t0 = time.monotonic()
    while not (log.is_file() and text in log.read_text()) and proc.poll() is None:
        if time.monotonic() - t0 > 300:
            proc.kill()
            raise AssertionError(f"{text!r} never appeared in {log}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
