"""Which layer of a tile database a height above ground flies in."""

from __future__ import annotations

import math


def layer_for_height(db, altitude_m: float | None, tolerance_frac: float) -> tuple[int | None, str]:
    """(layer, "") or (None, why there is no layer for this height): a database of one layer takes any height
    (or none); an altitude farther than ``tolerance_frac`` from every layer's gets none (a frame matched at
    the wrong scale is worse than no fix)."""
    layers = db.layers
    if altitude_m is None or not math.isfinite(altitude_m):
        if len(layers) == 1:
            return 0, ""
        return None, "no altitude"
    if altitude_m <= 0:
        return None, f"altitude {altitude_m:g} m is not above ground"
    alts = [lay.get("altitude_m") for lay in layers]
    if len(layers) == 1 and alts[0] is None:
        return 0, ""
    layer = db.layer_for_altitude(altitude_m)
    have = alts[layer]
    if have is not None and abs(altitude_m - float(have)) > tolerance_frac * float(have):
        listed = ", ".join(f"{a:g}" for a in alts if a is not None)
        return None, f"altitude {altitude_m:g} m has no layer (layers: {listed} m)"
    return layer, ""
