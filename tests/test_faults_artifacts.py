"""Fault injection for the artifacts (issue 28): every file a manifest lists is checked where it is opened,
builds resume every step, artifacts are readable by the service's account.

Real files changed on disk as a bad copy or a failing disk changes them (a flipped byte, a file cut short,
an edited imagery.json), real processes killed with SIGKILL in the middle of a build, the commands run
as subprocesses as a user runs them: each case asserts the exit status, the one-line message and that
what was there before is still there.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import textwrap

import numpy as np
import pytest

from tests.faults import copy, error_line, flip_byte, run, run_python
from tiles.io import default_mode

REPLAY = ("--size-px", 48, "--max-frames", 2, "--altitudes-m", 300, "--no-plots")


@pytest.fixture(scope="module")
def db_with_imagery(tiny, tmp_path_factory):
    """A copy of the tiny database with map imagery attached (at 10 m/px, from the 2020 map)."""
    from export.map_imagery import attach_imagery

    db = copy(tiny["db"], tmp_path_factory.mktemp("img") / "db")
    attach_imagery(db, [tiny["raster"]], gsd_m=10.0)
    return db


def _replay(tiny, db, bundle=None, *extra):
    return run("runtime", "replay", "geotiff", "--bundle", bundle or tiny["bundle"], "--db", db, "--map",
               tiny["raster"], *REPLAY, *extra)


def test_model_file_changed_after_the_export_is_refused_where_it_is_opened(tiny, tmp_path):
    """A flipped byte (same size) and a file cut short: one line naming model.onnx, never a run, never
    ONNX Runtime's InvalidProtobuf traceback."""
    for name, damage in (("flipped", flip_byte), ("cut", lambda p: p.write_bytes(p.read_bytes()[:100_000]))):
        bundle = copy(tiny["bundle"], tmp_path / name)
        damage(bundle / "model.onnx")
        out = _replay(tiny, tiny["db"], bundle)
        assert out.returncode == 2
        line = error_line(out.stderr)
        assert f"{bundle / 'model.onnx'}: sha256 differs from the bundle manifest" in line and "re-export" in line
        check = run("runtime", "check", "--db", tiny["db"], "--bundle", bundle)
        assert check.returncode == 2 and "model.onnx: sha256 differs" in error_line(check.stderr)


def test_map_imagery_changed_after_the_build_is_refused(db_with_imagery, tiny, tmp_path):
    """Pixels altered in place, and the imagery moved by editing its origin: both refused at open (the
    median error went from 2.7 m to 9.4 m when they were flown)."""
    from tiles.db import DatabaseError, TileDatabase

    TileDatabase.open(db_with_imagery)  # as built: verified
    altered = copy(db_with_imagery, tmp_path / "altered")
    flip_byte(altered / "imagery" / "rgb.npy")
    out = _replay(tiny, altered)
    assert out.returncode == 2
    assert f"{altered / 'imagery' / 'rgb.npy'}: sha256 differs from the manifest" in error_line(out.stderr)
    shifted = copy(db_with_imagery, tmp_path / "shifted")
    meta_path = shifted / "imagery" / "imagery.json"
    meta = json.loads(meta_path.read_text())
    meta["origin_xy"] = [meta["origin_xy"][0] + 50.0, meta["origin_xy"][1]]  # 50 m east, same number of bytes
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    with pytest.raises(DatabaseError, match=r"imagery\.json: sha256 differs|imagery\.json has \d+ bytes"):
        TileDatabase.open(shifted)
    from tiles.map_imagery import ImageryError, open_database_imagery

    with pytest.raises(ImageryError, match="imagery.json"):
        open_database_imagery(shifted)  # the folder alone is verified as well


def test_every_listed_file_of_a_database_is_verified(tmp_path):
    """Arrays, the spatial grid, the ANN index, the imagery: each one changed in turn is refused by name."""
    pytest.importorskip("faiss")
    from tiles.db import DatabaseError, TileDatabase
    from tiles.dbcheck import listed_files
    from tools.bench_search import synthetic_database

    db = tmp_path / "db"
    synthetic_database(db, 3000, dim=32, ann_min_rows=1000)
    names = sorted(listed_files(TileDatabase.open(db).manifest))
    assert any(n.startswith("ann-") for n in names) and any(n.startswith("grid_") for n in names)
    for name in names:
        bad = copy(db, tmp_path / f"bad-{name}")
        flip_byte(bad / name)
        with pytest.raises(DatabaseError, match=rf"{name}: sha256 differs"):
            TileDatabase.open(bad)
        TileDatabase.open(bad, verify=False)  # the fast restart checks sizes only (python -m runtime check: all)


def test_imagery_without_hashes_says_it_cannot_be_checked(db_with_imagery, tmp_path, caplog):
    from tiles.db import TileDatabase

    old = copy(db_with_imagery, tmp_path / "old")
    m = json.loads((old / "manifest.json").read_text())
    del m["imagery"]["files"]  # as databases were written before the imagery was hashed
    (old / "manifest.json").write_text(json.dumps(m))
    TileDatabase.open(old)
    assert "its map imagery carries no hashes" in caplog.text and "python -m export.map_imagery" in caplog.text


KILL_IMAGERY = textwrap.dedent("""
    import os, signal, sys
    import export.map_imagery as mi
    real, calls = mi._read_block, [0]
    def read_block(*a):  # the process dies (SIGKILL: no cleanup runs) while the imagery is written
        calls[0] += 1
        if calls[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a)
    mi._read_block = read_block
    {call}
""")


def test_a_build_killed_during_its_imagery_is_completed_by_the_same_command(tiny, naip_paths, tmp_path, caplog):
    """The database is written, the imagery step is killed: the database says its imagery was never written,
    and the same export command completes it (without embedding anything again)."""
    from tiles.db import TileDatabase

    bundle, db = copy(tiny["bundle"], tmp_path / "bundle"), tmp_path / "db"
    args = ["--bundle", bundle, "--tiles", naip_paths[2018], "--altitudes-m", 300, "--hfov-deg", 60, "--db-out", db,
            "--imagery-px", 256, "--no-progress", "--ann", "none", "--no-calibrate"]
    call = f"from export.__main__ import main; main({[str(a) for a in args]!r})"
    killed = run_python(KILL_IMAGERY.format(call=call), 3)
    assert killed.returncode == -signal.SIGKILL
    manifest = json.loads((db / "manifest.json").read_text())
    assert "imagery" not in manifest and manifest["count"] > 0
    TileDatabase.open(db)
    assert "its map imagery was never written" in caplog.text and "re-run the same" in caplog.text
    again = run("export", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "map imagery is not (the build stopped there): completing it" in again.stderr
    assert "chunks to embed" not in again.stderr  # the database itself was kept
    done = TileDatabase.open(db)
    assert done.manifest["imagery"]["files"] and done.manifest["count"] == manifest["count"]
    assert "nothing to do" in run("export", *args).stderr  # a third run: complete, kept as it is


def test_imagery_write_resumes_at_its_first_unfinished_row(naip_paths, tmp_path):
    from export.map_imagery import write_map_imagery

    tif = naip_paths[2018]
    whole = write_map_imagery([tif], tmp_path / "whole", gsd_m=5.0, block_px=64)
    call = f"mi.write_map_imagery([{str(tif)!r}], {str(tmp_path / 'part')!r}, gsd_m=5.0, block_px=64)"
    killed = run_python(KILL_IMAGERY.format(call=call), 40)
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "part").exists()
    work = next(tmp_path.glob(".part.work-*"))
    rows_done = json.loads((work / "progress.json").read_text())["rows_done"]
    assert rows_done >= 1
    part = write_map_imagery([tif], tmp_path / "part", gsd_m=5.0, block_px=64)
    for name in ("rgb.npy", "valid.npy"):
        assert np.array_equal(np.load(whole / name), np.load(part / name))
    assert not work.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_take_the_umask_not_0700(db_with_imagery, naip_paths, tmp_path, umask):
    """The imagery folder was created 0700 (a temporary folder renamed into place): a service running as
    another user could not read it."""
    from export.map_imagery import write_map_imagery

    old = os.umask(umask)
    try:
        out = write_map_imagery([naip_paths[2018]], tmp_path / "imagery", gsd_m=20.0)
        want_dir, want_file = default_mode(directory=True), default_mode()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == want_dir == 0o777 & ~umask
    assert all(stat.S_IMODE(f.stat().st_mode) == want_file for f in out.iterdir())
    assert stat.S_IMODE((db_with_imagery / "imagery").stat().st_mode) == default_mode(directory=True)
