"""The service embeds frame n+1 while frame n is fused (``pipeline``): the same fixes as one frame at a
time, the engine in its own thread, and a fallback to the fusion thread when a frame cannot be embedded
ahead (no compass heading, or the engine failed there). Real engine, database and Localizer."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from runtime.config import ServiceConfig
from runtime.inputs.telemetry import Telemetry
from runtime.localisation.localizer import Localizer
from runtime.service import Service
from tools.toy_assets import flight_crops, tiny_assets


def _frames(n=8):
    a = tiny_assets()
    return [(1.0 * i, img, {"index": i}) for i, (img, _) in enumerate(flight_crops(a["raster"], n_frames=n))]


def _run(frames, **kw) -> tuple[Service, list[dict]]:
    a = tiny_assets()
    cfg = ServiceConfig(bundle=str(a["bundle"]), db=str(a["db"]), source="unused", altitude_m=150.0,
                        heading_deg=30.0, **kw)
    svc = Service(cfg, source=list(frames))
    records: list[dict] = []
    svc.outputs = [type("Keep", (), {"emit": lambda self, r, f: records.append(r), "close": lambda self: None,
                                     "describe": lambda self: "keep"})()]
    assert svc.run() == 0
    return svc, [r for r in records if r["type"] == "fix"]


def _spy_threads(svc) -> list[str]:
    """The thread name of every engine call."""
    names, embed = [], svc.engine.embed_prepared

    def spy(x):
        names.append(threading.current_thread().name)
        return embed(x)

    svc.engine.embed_prepared = spy
    return names


def _essence(rec):
    return rec["frame"], rec["fix"], rec["raw"], [(m["row"], m["score"]) for m in rec["matches"]]


def test_pipelined_service_gives_the_same_fixes_with_the_engine_in_its_own_thread(monkeypatch):
    frames = _frames()
    seen: dict[bool, list[str]] = {}
    orig_init = Service.__init__

    def init(self, *args, **kw):
        orig_init(self, *args, **kw)
        seen[self.cfg.pipeline] = _spy_threads(self)

    monkeypatch.setattr(Service, "__init__", init)
    _, one_at_a_time = _run(frames, pipeline=False)
    svc, pipelined = _run(frames, pipeline=True)
    assert len(pipelined) == len(one_at_a_time) == len(frames)
    assert [_essence(r) for r in pipelined] == [_essence(r) for r in one_at_a_time]
    assert "embed" not in seen[False]
    # every frame had a heading: each embedded in the embed thread, none in the fusion thread (the one
    # main-thread call both runs share is the start-up self-check's)
    assert seen[True].count("embed") == len(frames)
    assert seen[True].count("MainThread") == len(seen[False]) - len(frames)
    assert all(r["latency_ms"]["inference"] > 0 for r in pipelined)  # the embed thread's time is reported
    assert svc.processed == len(frames)


def test_the_next_frame_is_embedded_while_the_current_one_is_fused(monkeypatch):
    """Frame i's embedding waits for frame i-1's fusion to start, and that fusion waits (up to 5 s) for
    frame i's embedding to start before it goes on: both hold only when the two run at the same time (one
    frame at a time, every wait would time out)."""
    frames = _frames(6)
    n = len(frames)
    located = [threading.Event() for _ in range(n)]
    embedding = [threading.Event() for _ in range(n)]
    overlaps, timeouts = [], []
    embed_ahead, locate = Localizer.embed_ahead, Localizer.locate

    def spy_embed(self, image, tel):
        i = int(tel.t)  # the frames' times are their indices
        embedding[i].set()
        if i > 0:
            if not located[i - 1].wait(5.0):
                timeouts.append(("embed", i))
            overlaps.append(i)  # frame i-1's fusion has started and waits for this frame's embedding
        return embed_ahead(self, image, tel)

    def spy_locate(self, image, tel, **kw):
        i = int(tel.t)
        located[i].set()
        if i + 1 < n and not embedding[i + 1].wait(5.0):
            timeouts.append(("locate", i))
        return locate(self, image, tel, **kw)

    monkeypatch.setattr(Localizer, "embed_ahead", spy_embed)
    monkeypatch.setattr(Localizer, "locate", spy_locate)
    _, recs = _run(frames, pipeline=True)
    assert len(recs) == n and timeouts == []
    assert overlaps == list(range(1, n))  # every frame after the first embedded during the previous fusion


def test_without_a_compass_heading_the_frame_is_embedded_in_the_fusion_thread():
    a = tiny_assets()
    frames = _frames(4)
    cfg = ServiceConfig(bundle=str(a["bundle"]), db=str(a["db"]), source="unused", altitude_m=150.0,
                        heading_search_angles=4)
    svc = Service(cfg, source=list(frames))
    names = _spy_threads(svc)
    assert svc.run() == 0
    assert svc.processed == len(frames) and set(names) == {"MainThread"}  # the rotation search, in locate()


def test_embed_ahead_is_what_locate_would_embed_and_refuses_another_heading():
    from runtime.engines.engine import load_engine
    from tiles.db import TileDatabase

    a = tiny_assets()
    engine = load_engine(a["bundle"], precision="fp32")
    try:
        loc = Localizer(engine, TileDatabase.open(a["db"]))
        img = _frames(1)[0][1]
        tel = Telemetry(t=0.0, altitude_m=150.0, heading_deg=30.0)
        assert loc.embed_ahead(img, Telemetry(t=0.0, altitude_m=150.0)) is None  # no heading: locate() searches
        ahead = loc.embed_ahead(img, tel)
        inline = loc.locate(img, tel)
        loc.reset()
        via = loc.locate(img, tel, ahead=ahead)
        assert np.array_equal(inline.matches.indices, via.matches.indices)
        assert np.allclose(inline.matches.scores, via.matches.scores, atol=1e-6)
        with pytest.raises(ValueError, match="embedded ahead at heading 30.0, located at 40.0"):
            loc.locate(img, Telemetry(t=1.0, altitude_m=150.0, heading_deg=40.0), ahead=ahead)
    finally:
        engine.close()


def test_a_failure_embedding_ahead_falls_back_to_the_fusion_thread(monkeypatch, caplog):
    frames = _frames(4)
    calls = {"n": 0}
    embed_ahead = Localizer.embed_ahead

    def flaky(self, image, tel):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("engine busy")
        return embed_ahead(self, image, tel)

    monkeypatch.setattr(Localizer, "embed_ahead", flaky)
    caplog.set_level(logging.WARNING, logger="runtime.service")
    svc, recs = _run(frames, pipeline=True)
    assert [r["frame"] for r in recs] == list(range(len(frames))) and all(r["matches"] for r in recs)
    assert any("embedding frame 1 ahead failed (RuntimeError: engine busy)" in r.getMessage() for r in caplog.records)
