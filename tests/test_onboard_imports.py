"""The onboard part imports with torch, timm and rasterio unavailable (a fresh interpreter that blocks them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "timm", "rasterio", "torchvision"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the onboard runtime must not import it")
            return None

    sys.meta_path.insert(0, Block())
    import importlib, pkgutil
    import runtime, tiles.db, tiles.io, tiles.map_imagery
    names = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime."))
    for n in names:
        importlib.import_module(n)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("imported", " ".join(names))
    """
)


def test_runtime_imports_without_torch_timm_rasterio():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.split()
    for name in ("engines.engine", "engines.tensorrt_engine", "inputs.sources", "search.searcher",
                 "localisation.localizer", "outputs.json_lines", "outputs.health", "service", "config", "__main__",
                 "engines.bundle", "engines.preprocess", "replay.geotiff"):
        assert f"runtime.{name}" in imported


def test_blocker_really_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER.replace("import runtime, tiles.db, tiles.io",
                                                                 "import torch")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_serve_help_runs_without_the_replay_module_loaded():
    proc = subprocess.run([sys.executable, "-m", "runtime", "serve", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--mavlink" in proc.stdout and "--health-port" in proc.stdout
