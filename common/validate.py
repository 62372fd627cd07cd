"""One rule for every number a user types: finite, in range, named in the error with the fix.

Every command (``tiles``, ``export``, ``runtime serve``/``replay``) and every library entry point that
takes a geometric number from outside checks it here, so ``--hfov 179`` is accepted or refused the same
way everywhere. Standard library only: the onboard runtime imports it (``tiles`` is the lowest package,
so ``runtime`` may import it and ``tiles`` itself can).

Each check returns the value as a ``float`` (normalised where said) or raises :class:`InputError`, a
``ValueError`` whose one-line message names the quantity, the value, the accepted range and the fix.
``arg(check)`` turns a check into an ``argparse`` ``type=`` so a bad option is reported by argparse as
``argument --altitude: ...`` with exit status 2; ``check_args(parser, args, {dest: (flag, check)})`` does
the same after parsing (for options declared elsewhere, lists from ``nargs``, values from config files).

Ranges and why:

- altitude (height above ground): ``(0, 10000]`` m. Zero or below is not a flight; above 10 km no
  satellite-map tile is meaningful for a drone camera (and it is a typo for feet or millimetres).
- hfov (horizontal field of view): ``(0, 150]`` degrees. The project's camera is a pinhole (rectilinear)
  model: its ground footprint ``2 h tan(hfov / 2)`` diverges at 180 degrees, and the widest rectilinear
  lenses made have a horizontal field near 130 degrees; a fisheye must be undistorted to a pinhole
  first. At 150 degrees the footprint is already 7.5 times the altitude.
- tilt: ``[0, 80)`` degrees from nadir (at 80 the far edge of a 20-degree field meets the horizon).
- heading: any finite angle, normalised to ``[0, 360)``.
- latitude ``[-90, 90]``, longitude ``[-180, 180]``; a swapped pair is named as such when detectable.
- radius, distance, footprint: ``> 0`` m, finite. Speed: ``[0, 150]`` m/s (540 km/h, beyond any
  multirotor or small fixed wing). Fractions: ``(0, 1]`` or ``[0, 1]`` as stated by the caller.
"""

from __future__ import annotations

import math

from common.cli import UserError

ALTITUDE_MAX_M = 10000.0
HFOV_MAX_DEG = 150.0
TILT_MAX_DEG = 80.0
SPEED_MAX_MPS = 150.0


class InputError(UserError, ValueError):
    """A number from outside (command line, config, caller) that cannot be right."""


def finite(name: str, value, hint: str = "") -> float:
    """``value`` as a finite float, else :class:`InputError` (NaN, inf, text, None)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}{_hint(hint)}") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {value!r}{_hint(hint)}")
    return v


def in_range(name: str, value, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, unit: str = "", hint: str = "") -> float:
    """A finite number within ``lo..hi`` (each bound closed unless ``*_open``; ``None`` = unbounded)."""
    v = finite(name, value, hint)
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    high_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if low_bad or high_bad:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        rng = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        u = f" {unit}" if unit else ""
        raise InputError(f"{name} must be in {rng}{u}, got {value!r}{_hint(hint)}")
    return v


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


# ---- the project's quantities ------------------------------------------------------------------------


def altitude_m(value, name: str = "altitude_m") -> float:
    """Height above ground in metres: ``(0, 10000]``."""
    return in_range(name, value, 0.0, ALTITUDE_MAX_M, lo_open=True, unit="m",
                    hint="give the flight height above ground in metres")


def hfov_deg(value, name: str = "hfov_deg") -> float:
    """Horizontal field of view of a pinhole camera in degrees: ``(0, 150]``."""
    return in_range(name, value, 0.0, HFOV_MAX_DEG, lo_open=True, unit="degrees",
                    hint="give the camera's horizontal field of view (undistort a fisheye to a pinhole first)")


def tilt_deg(value, name: str = "tilt_deg") -> float:
    """Camera pitch forward from nadir in degrees: ``[0, 80)``."""
    return in_range(name, value, 0.0, TILT_MAX_DEG, hi_open=True, unit="degrees",
                    hint="0 looks straight down")


def heading_deg(value, name: str = "heading_deg") -> float:
    """A compass heading, any finite angle, returned in ``[0, 360)`` (0 = north, clockwise)."""
    return finite(name, value, "give a compass heading in degrees (0 = north, clockwise)") % 360.0


def latitude(value, name: str = "lat") -> float:
    return in_range(name, value, -90.0, 90.0, unit="degrees", hint="WGS84 latitude, north positive")


def longitude(value, name: str = "lon") -> float:
    return in_range(name, value, -180.0, 180.0, unit="degrees", hint="WGS84 longitude, east positive")


def lat_lon(lat, lon) -> tuple[float, float]:
    """A WGS84 (lat, lon) pair; a pair that only makes sense swapped says so."""
    la, lo = finite("lat", lat), finite("lon", lon)
    if abs(la) > 90.0 and abs(lo) <= 90.0:
        raise InputError(f"lat {lat!r} is outside [-90, 90] but lon {lon!r} would be a latitude: "
                         "did you swap --lat and --lon?")
    return latitude(la), longitude(lo)


def positive(name: str, value, unit: str = "", hint: str = "") -> float:
    """A finite number ``> 0`` (radius, distance, footprint, stride, interval)."""
    return in_range(name, value, 0.0, None, lo_open=True, unit=unit, hint=hint)


def radius_m(value, name: str = "radius_m") -> float:
    return positive(name, value, "m", "a search radius on the ground in metres")


def speed_mps(value, name: str = "speed_mps") -> float:
    """Ground speed in m/s: ``[0, 150]``."""
    return in_range(name, value, 0.0, SPEED_MAX_MPS, unit="m/s", hint="ground speed in metres per second")


def fraction(name: str, value, *, zero_ok: bool = False) -> float:
    """A fraction in ``(0, 1]`` (or ``[0, 1]`` with ``zero_ok``)."""
    return in_range(name, value, 0.0, 1.0, lo_open=not zero_ok)


def integer(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """A whole number within ``lo..hi`` (closed; ``None`` = unbounded): a count, a port, a number of threads."""
    whole = "" if isinstance(value, bool) else value
    if isinstance(whole, float) and whole.is_integer():
        whole = int(whole)
    try:
        v = int(whole) if isinstance(whole, (int, str)) else None
    except ValueError:
        v = None
    if v is None:
        raise InputError(f"{name} must be a whole number, got {value!r}{_hint(hint)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        raise InputError(f"{name} must be a whole number {rng}, got {value!r}{_hint(hint)}")
    return v


# ---- rules for config fields: ``check(value, name) -> value`` (field metadata "check", common.cli) ---------


def int_rule(lo: int | None = 1, hi: int | None = None, hint: str = ""):
    """A field's check: a whole number in ``[lo, hi]``."""
    def check(value, name: str = "value") -> int:
        return integer(name, value, lo, hi, hint)
    return check


def range_rule(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False, unit: str = "",
               hint: str = ""):
    """A field's check: a finite number in the range (see :func:`in_range`)."""
    def check(value, name: str = "value") -> float:
        return in_range(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open, unit=unit, hint=hint)
    return check


def fraction_rule(zero_ok: bool = False):
    """A field's check: a fraction in ``(0, 1]`` (``[0, 1]`` with ``zero_ok``)."""
    def check(value, name: str = "value") -> float:
        return fraction(name, value, zero_ok=zero_ok)
    return check


def positive_rule(unit: str = "", hint: str = ""):
    """A field's check: a finite number ``> 0``."""
    def check(value, name: str = "value") -> float:
        return positive(name, value, unit, hint)
    return check


def arg(check):
    """An ``argparse`` ``type=`` from a check: ``ap.add_argument("--altitude", type=arg(altitude_m))``."""
    import argparse

    def parse(text: str) -> float:
        try:
            return check(text)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(check, "__name__", "number")  # argparse names the type in some messages
    return parse


def check_args(parser, args, checks: dict) -> None:
    """Validate parsed options in place: ``checks`` maps ``dest`` to ``(flag, check)``; a list value
    (``nargs``) is checked item by item; None (option absent) is left alone. A bad value ends the program
    through ``parser.error`` ("argument --flag: ...", exit status 2), as a bad ``type=`` would."""
    for dest, (flag, check) in checks.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            checked = [check(v) for v in value] if isinstance(value, (list, tuple)) else check(value)
        except InputError as e:
            parser.error(f"argument {flag}: {e}")
        setattr(args, dest, checked)
