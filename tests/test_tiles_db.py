"""tiles.db: round trip, memory-mapped read, refusal of corrupt or mismatched databases, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.engines.preprocess import Preprocess
from tiles import db as tdb
from tiles.db import DatabaseError, DatabaseMismatchError, TileDatabase, empty_entries, write_database

PRE = Preprocess((64, 64), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear").to_dict()
MODEL = {"fingerprint": "abc123", "name": "test_efficientnet", "embedding_dim": 8}


def _make(n=10, d=8, layers=2, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32) * 3
    e = empty_entries(n)
    e["layer"] = np.arange(n) % layers  # interleaved: the writer must group them
    for i in range(n):
        e[i]["label"] = f"t{i:03d}"
    e["has_geo"] = True
    e["x"] = np.arange(n) * 10.0
    e["y"] = 5.0
    e["altitude_m"] = np.where(e["layer"] == 0, 150, 300)
    lays = [{"name": f"{a}m", "altitude_m": a} for a in (150, 300)][:layers]
    return emb, e, lays


def test_round_trip_grouped_by_layer_and_normalised(tmp_path):
    emb, e, lays = _make()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE, crs="EPSG:26914")
    db = TileDatabase.open(p)
    assert isinstance(db.embeddings, np.memmap) and db.embeddings.dtype == np.float16
    assert len(db) == 10 and db.embedding_dim == 8 and db.crs == "EPSG:26914"
    assert np.allclose(np.linalg.norm(db.embeddings.astype(np.float32), axis=1), 1, atol=2e-3)
    s0, s1 = db.layer_slice(0), db.layer_slice("300m")
    assert (s0.start, s0.stop, s1.start, s1.stop) == (0, 5, 5, 10)
    assert set(db.entries["label"][s0]) == {f"t{i:03d}" for i in range(0, 10, 2)}
    # each row still pairs with its own embedding after regrouping
    for row in range(10):
        i = int(db.entries[row]["label"][1:])
        ref = emb[i] / np.linalg.norm(emb[i])
        assert np.allclose(db.embeddings[row].astype(np.float32), ref, atol=2e-3)
    assert db.layer_for_altitude(170) == 0 and db.layer_for_altitude(260) == 1


def test_entries_without_geometry_allowed(tmp_path):
    emb = np.eye(4, 8, dtype=np.float32)
    e = empty_entries(4)
    e["label"] = ["0001", "0002", "0003", "0004"]
    p = write_database(tmp_path / "g", emb, e, layers=[{"name": "gallery"}], model=MODEL, preprocess=PRE)
    db = TileDatabase.open(p)
    assert not db.entries["has_geo"].any() and np.isnan(db.entries["x"]).all()
    assert list(db.entries["label"]) == ["0001", "0002", "0003", "0004"]
    assert db.layer_for_altitude(123) == 0


def test_refuses_overwrite_and_bad_inputs(tmp_path):
    emb, e, lays = _make()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_database(p, emb, e, layers=lays, model=MODEL, preprocess=PRE)
    write_database(p, emb * 2, e, layers=lays, model=MODEL, preprocess=PRE, overwrite=True)
    with pytest.raises(DatabaseError, match="zero norm"):
        write_database(tmp_path / "z", np.zeros_like(emb), e, layers=lays, model=MODEL, preprocess=PRE)
    with pytest.raises(DatabaseError, match="NaN"):
        bad = emb.copy()
        bad[0, 0] = np.nan
        write_database(tmp_path / "n", bad, e, layers=lays, model=MODEL, preprocess=PRE)
    with pytest.raises(DatabaseError, match="fingerprint"):
        write_database(tmp_path / "f", emb, e, layers=lays, model={"name": "x"}, preprocess=PRE)
    with pytest.raises(DatabaseError, match="9 entries for 10"):
        write_database(tmp_path / "m", emb, e[:9], layers=lays, model=MODEL, preprocess=PRE)


def test_truncated_and_corrupt_files_refused(tmp_path):
    emb, e, lays = _make(n=50)
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    f = p / tdb.EMBEDDINGS
    data = f.read_bytes()
    f.write_bytes(data[:-16])
    with pytest.raises(DatabaseError, match="truncated"):
        TileDatabase.open(p)
    f.write_bytes(data[:-16] + b"\x00" * 16)  # same size, other bytes
    TileDatabase.open(p, verify=False)  # sizes alone cannot tell (the fast restart)...
    with pytest.raises(DatabaseError, match="sha256"):
        TileDatabase.open(p)  # ...the hash, checked by default, does


def test_version_and_format_refused(tmp_path):
    emb, e, lays = _make()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    m = json.loads((p / "manifest.json").read_text())
    m["format_version"] = 99
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatabaseError, match="version 99.*rebuild"):
        TileDatabase.open(p)
    (p / "manifest.json").write_text("{not json")
    with pytest.raises(DatabaseError, match="not valid JSON"):
        TileDatabase.open(p)
    with pytest.raises(DatabaseError, match="no tile database"):
        TileDatabase.open(tmp_path / "nowhere")


def test_mismatch_names_each_field(tmp_path):
    emb, e, lays = _make()
    db = TileDatabase.open(write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE))
    db.check_compatible(model_fingerprint="abc123", preprocess=PRE, embedding_dim=8)
    other = dict(PRE, input_size=[96, 96])
    with pytest.raises(DatabaseMismatchError) as err:
        db.check_compatible(model_fingerprint="fff", preprocess=other, embedding_dim=16)
    msg = str(err.value)
    assert "model fingerprint" in msg and "'fff'" in msg and "embedding size" in msg
    assert "preprocess input_size" in msg and "[96, 96]" in msg


def test_interrupted_write_leaves_no_final_folder(tmp_path, monkeypatch):
    emb, e, lays = _make()
    calls = {"n": 0}
    real_save = np.save

    def dying_save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(tdb.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    assert not (tmp_path / "db").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_interrupted_overwrite_keeps_the_old_database(tmp_path, monkeypatch):
    emb, e, lays = _make()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    before = (p / tdb.EMBEDDINGS).read_bytes()
    monkeypatch.setattr(tdb.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_database(p, emb * -1, e, layers=lays, model=MODEL, preprocess=PRE, overwrite=True)
    assert (p / tdb.EMBEDDINGS).read_bytes() == before
    TileDatabase.open(p)


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'timm', 'rasterio', 'pyproj', 'cv2', 'onnxruntime'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_reader_imports_with_numpy_alone(tmp_path):
    emb, e, lays = _make()
    p = write_database(tmp_path / "db", emb, e, layers=lays, model=MODEL, preprocess=PRE)
    code = BLOCKER + f"""
from tiles.db import TileDatabase
db = TileDatabase.open({str(p)!r})
print(len(db), db.embeddings.dtype)
assert not any(m.split('.')[0] in {{'torch', 'rasterio', 'cv2'}} for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10 float16"
