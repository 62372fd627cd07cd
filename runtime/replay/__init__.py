"""Offline replay: how well the runtime localises, on SUES-200 flights and on flights over a GeoTIFF.

``python -m runtime replay sues200 --data ROOT --bundle B --out DIR``
    Per altitude, drone->satellite retrieval per frame under both protocols of REFERENCE.md section 2
    (``official``: every location's satellite in the gallery, the training ones as distractors;
    ``query_only``: the test locations only, Sample4Geo's easier gallery), per flight (the frames of a
    location and altitude fused: the mean embedding, and a majority vote of the frames' top-1), optionally
    satellite->drone, and the engine's latency. The gallery is embedded on the fly from the satellite
    images (part of the evaluation), or read from the gallery database ``python -m export --bundle B
    --gallery ROOT --gallery-out DB`` wrote (``--db DB``; labels are the location folder names).

``python -m runtime replay geotiff --map REF.tif --flight-raster OTHER_YEAR.tif --bundle B --db DB --out DIR``
    Per altitude, a flight rendered from the flight raster along a path (runtime.replay.flights), each frame
    through the onboard chain: engine -> Searcher (the altitude's layer) -> estimate_fix ->
    PositionFilter. Reports the error in metres per frame (median, p95), the fix rate, R@1/R@5 (the true
    position inside the top-1 / a top-5 tile) and the latency of each stage. The tile database ``DB`` of
    ``--map`` is the one the aircraft flies with, built once by ``python -m export --bundle B --tiles
    REF.tif --altitudes 150 200 250 300 --hfov 60 --db-out DB`` (one layer per altitude); the replay
    builds none itself.

Results go to ``DIR`` as JSON and CSV, with PNG plots (track over the map, error along the flight,
per-altitude bars); a per-altitude table is printed. The functions :func:`replay_sues200` and
:func:`replay_geotiff` return the same results as dicts for the demo and the tests.
"""
