"""SUES-200 replay: drone->satellite retrieval per frame and per flight, both protocols, per altitude.

See :mod:`runtime.replay` for the command line. The gallery is embedded on the fly from the satellite
images, or read from a gallery database written by ``python -m export --gallery``.

The benchmark's metrics (R@k, AP, both protocols) rank the whole gallery for every query, as the papers
do. What flies is measured beside them (``flown``): every frame through the service's
:class:`~runtime.localisation.localizer.Localizer` over a gallery database (the one given, else one written from the
gallery's embeddings): its search and its top tile (a gallery has no map to track over, so no fix is
trusted, and SUES-200 frames carry no heading: no derotation). Its R@1 is the official protocol's, up to
ties.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import numpy as np

from common.cli import whole_writes
from common.metrics import retrieval_metrics
from runtime.replay.common import (
    batch1_latency,
    bundle_path,
    embed_images,
    jsonable,
    load_engine_or_use,
    rnd,
    write_csv,
)
from tiles.io import atomic_write_json

log = logging.getLogger(__name__)

METRIC_KEYS = ("R@1", "R@5", "R@10", "R@1%", "AP")
SUES_CSV_FIELDS = ("altitude_m", "level", "direction", "protocol", *METRIC_KEYS, "n_queries", "n_gallery")


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _row(alt, level, direction, protocol, m) -> dict:
    return {"altitude_m": alt, "level": level, "direction": direction, "protocol": protocol,
            **{k: rnd(m.get(k)) for k in METRIC_KEYS}, "n_queries": m.get("n_queries"),
            "n_gallery": m.get("n_gallery")}


def replay_sues200(data_root, bundle, *, altitudes=None, db=None, out_dir=None, batch_size: int = 32,
                   directions=("drone2sat",), latency_frames: int = 20, plots: bool = True, precision: str = "auto",
                   backend: str = "auto", threads: int | None = None) -> dict:
    """SUES-200 replay (see the module docstring); ``bundle`` is a bundle folder or a loaded engine.

    Returns ``{"dataset", "engine", "altitudes": {alt: {...}}, "rows": [...]}``; with ``out_dir``
    also writes ``replay_sues200.json``, ``replay_sues200.csv`` and ``sues200_r1.png``.
    """
    from common.sues200_layout import SUES200

    for d in directions:
        if d not in ("drone2sat", "sat2drone"):
            raise ValueError(f"direction {d!r} is not 'drone2sat' or 'sat2drone'")
    engine = load_engine_or_use(bundle, precision, backend, threads)
    ds = data_root if isinstance(data_root, SUES200) else SUES200(data_root)
    gallery = _Gallery(engine, ds, db, batch_size)
    results: dict = {"dataset": {"root": str(ds.root), "layout": ds.layout}, "engine": engine.name,
                     "gallery": "database" if gallery.db is not None else "embedded on the fly",
                     "altitudes": {}, "rows": []}
    todo = ds.altitudes if altitudes is None else tuple(int(a) for a in altitudes)
    for alt in todo:
        res, rows = _replay_altitude(engine, ds, gallery, alt, batch_size, directions, latency_frames)
        results["altitudes"][str(alt)] = res
        results["rows"] += rows
        log.info("SUES-200 %d m: frame R@1 %.2f (official) / %.2f (query-only), flight R@1 %.2f, through the "
                 "Localizer R@1 %.2f", alt, res["frame"]["official"]["R@1"], res["frame"]["query_only"]["R@1"],
                 res["flight_mean"]["official"]["R@1"], res["flown"]["R@1"])
        results["complete"] = alt == todo[-1]
        if out_dir is not None:  # after each altitude: a replay stopped later keeps what it finished
            results["files"] = _write(Path(out_dir), results, plots and results["complete"])
    return results


class _Gallery:
    """Satellite embeddings per location: from a gallery database, or embedded on the fly (cached)."""

    def __init__(self, engine, ds, db, batch_size: int):
        self.engine, self.ds, self.batch_size, self.db = engine, ds, batch_size, None
        self.cache: dict[str, np.ndarray] = {}
        if db is not None:
            from runtime.engines.engine import check_engine_database
            from tiles.db import TileDatabase

            self.db = db if isinstance(db, TileDatabase) else TileDatabase.open(db)
            check_engine_database(engine, self.db)
            self.where = {str(v): i for i, v in enumerate(self.db.entries["label"])}
            self.emb = np.asarray(self.db.embeddings, np.float32)

    def __call__(self, locs: list[str], alt: int) -> np.ndarray:
        if self.db is not None:
            missing = [c for c in locs if c not in self.where]
            if missing:
                raise ValueError(
                    f"gallery database {self.db.path} has no entry for locations {missing[:5]}; rebuild it "
                    f"from this dataset: python -m export --bundle {shlex.quote(str(bundle_path(self.engine)))} "
                    f"--gallery {shlex.quote(str(self.ds.given_root))} --gallery-out "
                    f"{shlex.quote(str(self.db.path))} --overwrite")
            return _normalize(self.emb[[self.where[c] for c in locs]])
        todo = [c for c in locs if c not in self.cache]
        if todo:
            emb, _ = embed_images(self.engine, [self.ds.satellite_image(c, alt) for c in todo], self.batch_size)
            self.cache.update(zip(todo, emb))
        return np.stack([self.cache[c] for c in locs])


def _replay_altitude(engine, ds, gallery, alt: int, batch_size: int, directions, latency_frames: int):
    """(result, CSV rows) of one altitude: frames, flights (mean embedding, vote), sat->drone, latency."""
    from common.sues200_layout import PROTOCOLS

    test = ds.split(alt)["test"]
    if not test:
        raise ValueError(f"{ds.root} has no test location at {alt} m: nothing to evaluate")
    gallery_ids = ds.gallery_ids(alt)
    g_emb, g_lab = gallery(gallery_ids, alt), np.asarray(gallery_ids)
    junks = {p: np.asarray(ds.protocol_junk(alt, p, g_lab)) for p in PROTOCOLS}
    q_paths, q_lab, flight_of = [], [], []
    for fi, loc in enumerate(test):
        frames = ds.drone_frames(loc, alt)
        q_paths += frames
        q_lab += [loc] * len(frames)
        flight_of += [fi] * len(frames)
    q_emb, timing = embed_images(engine, q_paths, batch_size)
    q_lab, flight_of = np.asarray(q_lab), np.asarray(flight_of)
    sim = q_emb @ g_emb.T
    res = {"n_test_locations": len(test), "n_gallery_locations": len(gallery_ids), "n_frames": len(q_paths),
           "frame": {}, "flight_mean": {}, "flight_vote": {}}
    rows = []
    f_emb = _normalize(np.stack([q_emb[flight_of == i].mean(0) for i in range(len(test))]))
    for protocol, junk in junks.items():
        res["frame"][protocol] = retrieval_metrics(sim, q_lab, g_lab, ks=(1, 5, 10), junk=junk)
        # per flight: the mean of the frames' embeddings, and a majority vote of their top-1
        res["flight_mean"][protocol] = retrieval_metrics(f_emb @ g_emb.T, np.asarray(test), g_lab, ks=(1, 5, 10),
                                                         junk=junk)
        res["flight_vote"][protocol] = _flight_vote(sim, test, g_lab, flight_of, junk)
        rows += [_row(alt, level, "drone2sat", protocol, res[level][protocol])
                 for level in ("frame", "flight_mean", "flight_vote")]
    res["flown"] = _flown(engine, gallery, g_emb, g_lab, q_emb, q_lab, flight_of, alt)
    if "sat2drone" in directions:
        res["sat2drone"] = _sat2drone(engine, ds, gallery, alt, test, gallery_ids, q_emb, q_lab, batch_size)
        rows += [_row(alt, "frame", "sat2drone", p, m) for p, m in res["sat2drone"].items()]
    res["latency"] = _latency(engine, q_paths[:latency_frames], timing, batch_size)
    return res, rows


def _flown(engine, gallery, g_emb, g_lab, q_emb, q_lab, flight_of, alt: int) -> dict:
    """Every frame through the Localizer the service runs, one flight (test location) after another: the
    share whose top match is the frame's location (R@1)."""
    import tempfile

    from runtime.localisation.localizer import Localizer, LocalizerConfig, Telemetry
    from tiles.db import TileDatabase

    with tempfile.TemporaryDirectory(prefix="sues200-gallery-") as tmp:
        db = gallery.db if gallery.db is not None else TileDatabase.open(_gallery_database(engine, g_emb, g_lab, tmp))
        loc = Localizer(engine, db, LocalizerConfig(derotate=False))
        labels = db.entries["label"]
        hits = []
        for i in range(len(q_emb)):
            if i == 0 or flight_of[i] != flight_of[i - 1]:
                loc.reset()
            r = loc.locate(None, Telemetry(t=float(i), altitude_m=float(alt)), embedding=q_emb[i])
            hits.append(str(labels[int(r.matches.indices[0][0])]) == str(q_lab[i]))
    return {"R@1": 100.0 * float(np.mean(hits)), "n_queries": len(hits), "n_gallery": len(db.entries)}


def _gallery_database(engine, g_emb, g_lab, folder) -> Path:
    """A gallery database of the embeddings at hand (as ``python -m export --gallery`` writes one)."""
    from tiles.db import empty_entries, write_database

    entries = empty_entries(len(g_lab))
    entries["label"], entries["layer"] = [str(v) for v in g_lab], 0
    return write_database(Path(folder) / "gallery", g_emb, entries, layers=[{"name": "gallery"}],
                          model={"fingerprint": engine.model_fingerprint, "embedding_dim": engine.embedding_dim},
                          preprocess=engine.preprocess.to_dict())


def _flight_vote(sim, test, g_lab, flight_of, junk) -> dict:
    """Majority vote of a flight's frames' top-1 location (ties: the best summed similarity)."""
    s = sim if junk is None else np.where(junk[None, :], -np.inf, sim)
    top1 = np.argmax(s, axis=1)
    hits = []
    for i, loc in enumerate(test):
        votes = np.bincount(top1[flight_of == i], minlength=len(g_lab)).astype(float)
        votes += 1e-6 * np.nan_to_num(s[flight_of == i].sum(0), neginf=-1e9) / max(1, (flight_of == i).sum())
        hits.append(g_lab[int(np.argmax(votes))] == loc)
    return {"R@1": 100.0 * float(np.mean(hits)), "n_queries": len(test),
            "n_gallery": int(len(g_lab) - (0 if junk is None else np.asarray(junk).sum()))}


def _sat2drone(engine, ds, gallery, alt, test, gallery_ids, q_emb, q_lab, batch_size) -> dict:
    from common.sues200_layout import PROTOCOLS

    extra = [c for c in gallery_ids if c not in test]
    extra_paths = [p for c in extra for p in ds.drone_frames(c, alt)]
    extra_lab = [c for c in extra for _ in ds.drone_frames(c, alt)]
    e_emb, _ = embed_images(engine, extra_paths, batch_size)
    d_emb = np.concatenate([q_emb, e_emb]) if len(e_emb) else q_emb
    d_lab = np.asarray(list(q_lab) + extra_lab)
    s2d = gallery(test, alt) @ d_emb.T
    return {p: retrieval_metrics(s2d, np.asarray(test), d_lab, ks=(1, 5, 10),
                                 junk=np.asarray(ds.protocol_junk(alt, p, d_lab))) for p in PROTOCOLS}


def _latency(engine, paths, timing: dict, batch_size: int) -> dict:
    from runtime.replay.flights import read_rgb

    imgs = [read_rgb(p) for p in paths]
    return {"batched_fps": rnd(timing["n"] / timing["embed_s"], 2) if timing["embed_s"] > 0 else None,
            "batched_ms_per_frame": rnd(1e3 * timing["embed_s"] / max(1, timing["n"]), 3),
            "decode_ms_per_frame": rnd(1e3 * timing["decode_s"] / max(1, timing["n"]), 3),
            "batch_size": batch_size, **(batch1_latency(engine, imgs) if imgs else {})}


def _write(out: Path, results: dict, plots: bool) -> dict:
    with whole_writes():  # a SIGTERM waits until the JSON and the CSV are written
        return _write_files(out, results, plots)


def _write_files(out: Path, results: dict, plots: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "replay_sues200.json", jsonable(results))
    write_csv(out / "replay_sues200.csv", results["rows"], SUES_CSV_FIELDS)
    files = {"json": str(out / "replay_sues200.json"), "csv": str(out / "replay_sues200.csv")}
    if plots:
        from runtime.replay.plots import plot_altitude_bars

        bars = [{"altitude_m": r["altitude_m"], "series": f"{r['level']} {r['protocol']}", "R@1": r["R@1"]}
                for r in results["rows"] if r["direction"] == "drone2sat"]
        files["r1_png"] = str(plot_altitude_bars(out / "sues200_r1.png", bars, "R@1",
                                                 title="SUES-200 drone->satellite R@1 per altitude"))
    return files


def sues200_table(results: dict) -> str:
    """A per-altitude text table of a :func:`replay_sues200` result."""
    head = (f"{'alt':>5} | {'frames':>6} | {'R@1 off':>7} {'R@5 off':>7} {'AP off':>7} | {'R@1 qo':>7} "
            f"{'AP qo':>7} | {'flight R@1 off':>14} {'qo':>6} {'vote':>6} | {'flown':>6} | {'ms/frame':>8} "
            f"{'b1 ms':>7}")
    lines = [f"SUES-200 drone->satellite ({results['engine']}; off = official gallery with distractors, "
             "qo = query-only gallery, flown = R@1 of each frame through the service's Localizer)", head,
             "-" * len(head)]
    for alt, r in results["altitudes"].items():
        fo, fq = r["frame"]["official"], r["frame"]["query_only"]
        lat = r.get("latency", {})
        lines.append(
            f"{alt:>5} | {r['n_frames']:>6} | {fo['R@1']:7.2f} {fo['R@5']:7.2f} {fo['AP']:7.2f} | "
            f"{fq['R@1']:7.2f} {fq['AP']:7.2f} | {r['flight_mean']['official']['R@1']:14.2f} "
            f"{r['flight_mean']['query_only']['R@1']:6.2f} {r['flight_vote']['official']['R@1']:6.2f} | "
            f"{r['flown']['R@1']:6.2f} | "
            f"{lat.get('batched_ms_per_frame') or float('nan'):8.2f} {lat.get('total_ms_median') or float('nan'):7.2f}"
        )
    return "\n".join(lines)

