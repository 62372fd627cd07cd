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
