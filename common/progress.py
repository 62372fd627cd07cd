"""Progress bars of the long desktop steps (evaluation, mining, export, calibration, the demo): tqdm on stderr.

On a terminal a bar redraws as tqdm does; elsewhere (a log file, a CI job, a pipe) it writes at most every
:data:`LOG_INTERVAL_S` seconds, so a log gets a few lines per step, not a flood. tqdm comes with the
``geo`` and ``train`` extras; without it the work runs silently. The onboard service never shows one:
nothing of ``runtime`` imports this module.
"""

from __future__ import annotations

import sys

#: seconds between two writes of a bar when stderr is no terminal
LOG_INTERVAL_S = 10.0
#: ... and on a terminal (tqdm's default)
TERMINAL_INTERVAL_S = 0.1


def progress_bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
                 leave: bool = True):
    """A tqdm bar over ``iterable`` (or one to ``update(n)`` by hand, as a context manager); ``enabled=False``
    (the commands' ``--no-progress``) gives a silent one."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety: without tqdm the work runs silently
        return _Silent(iterable)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, leave=leave,
                mininterval=TERMINAL_INTERVAL_S if _on_terminal() else LOG_INTERVAL_S)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class _Silent:
    """What :func:`progress_bar` gives without tqdm: the same calls, nothing shown."""

    def __init__(self, iterable=None):
        self._iterable = iterable

    def __iter__(self):
        return iter(() if self._iterable is None else self._iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def counted(iterable, bar):
    """``iterable``'s items, advancing ``bar`` by one after each is done with (one bar over several loops;
    ``bar`` None: the items alone)."""
    for item in iterable:
        yield item
        if bar is not None:
            bar.update(1)
