"""How many threads the onboard service lets numpy's BLAS use: one.

The service already runs capture, embedding, fusion, registration and output threads on a companion
computer's few cores; a BLAS that spreads each small matrix product (one frame's descriptor against a
layer's tiles) over every core only makes those threads fight (measured on 2 cores: a 2080 x 1280 product
0.29 ms on one thread, 8 ms on two while the engine runs). ``python -m runtime serve`` sets the BLAS
environment variables before numpy loads; :func:`limit_blas_threads` applies the same limit at run time
(threadpoolctl) for a service started any other way (a benchmark, an embedding program).

The engine's own threads (ONNX Runtime's intra-op pool) follow the same reasoning: with the pipeline on,
the engine embeds frame n+1 while the fusion works on frame n, so an engine spread over every core fights
the fusion for them. :func:`engine_threads` leaves one core to the fusion (measured on 2 cores: inference
in the service 1.34x its time alone with ONNX Runtime's default pool of 2, 1.19x with 1; 202 -> 245 fps).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def engine_threads(given: int | None, pipeline: bool) -> int | None:
    """ONNX Runtime intra-op threads for the service: ``given`` when set, else every core but one while the
    pipeline overlaps the engine with the fusion (None: ONNX Runtime's own choice)."""
    import os

    if given is not None or not pipeline:
        return given
    return max(1, (os.cpu_count() or 2) - 1)


def limit_blas_threads(n: int = 1):
    """Limit numpy's BLAS to ``n`` threads now; returns the threadpoolctl limiter (None without it)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is not installed (`pip install 'geoloc-edge[runtime]'`): numpy's BLAS "
                       "may use every core and slow the service's search")
        return None
    return threadpool_limits(n, user_api="blas")
