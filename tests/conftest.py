"""Shared fixtures: the bundled real NAIP rasters and generated tiny rasters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.toy_assets import NAIP_DIR, REPO, naip_files  # noqa: F401  (re-exported to the tests)


@pytest.fixture(scope="session")
def naip_paths() -> dict[int, Path]:
    files = naip_files()
    if len(files) < 2:
        pytest.skip(f"bundled NAIP rasters missing from {NAIP_DIR}")
    return files


@pytest.fixture(scope="session")
def tiny() -> dict:
    """A random-weight bundle (float and uint8 input) and its two-layer tile database of the 2020 NAIP
    image, built once per test process: {"bundle", "bundle_u8", "db", "raster", "root"}."""
    from tools.toy_assets import tiny_assets

    return tiny_assets()


@pytest.fixture(scope="session")
def thumb_imagery(tiny, tmp_path_factory):
    """The thumbnail model's engine and its database of the 2020 image with the map imagery registration
    reads (the chain's tests get trusted fixes from it), and the tiny assets."""
    import shutil

    from export.map_imagery import attach_imagery
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    path = tmp_path_factory.mktemp("thumb") / "db"
    shutil.copytree(tiny["db_thumb"], path)
    attach_imagery(path, [tiny["raster"]], gsd_m=5.0)
    engine = load_engine(tiny["bundle_thumb"])
    yield engine, TileDatabase.open(path), tiny
    engine.close()
