"""runtime.engines.preprocess: the one preprocessing definition."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.engines.preprocess import Preprocess, bgr_to_rgb


def test_values_by_hand():
    p = Preprocess((2, 2), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 51
    x = p(img)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], -1.0) and np.allclose(x[2], 0.2)


def test_resize_filter_and_batch():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    p = Preprocess((16, 24), interpolation="area")
    b = p.batch([img, img[::-1]])
    assert b.shape == (2, 3, 16, 24)
    assert np.array_equal(b[0], p(img))
    import cv2

    assert np.array_equal(p.resize(img), cv2.resize(img, (24, 16), interpolation=cv2.INTER_AREA))
    assert Preprocess((16, 24)).batch([]).shape == (0, 3, 16, 24)


def test_grey_and_rgba_accepted_float_refused():
    p = Preprocess((8, 8))
    assert p(np.zeros((8, 8), np.uint8)).shape == (3, 8, 8)
    assert p(np.zeros((8, 8, 4), np.uint8)).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="uint8"):
        p(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        p(np.zeros((0, 8, 3), np.uint8))


def test_round_trip_fingerprint_and_diff():
    a = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")
    b = Preprocess.from_dict(a.to_dict())
    assert a == b and a.fingerprint() == b.fingerprint()
    c = Preprocess((256, 256), (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert c.fingerprint() != a.fingerprint()
    assert a.diff(c) == ["input_size: [224, 224] != [256, 256]"]
    with pytest.raises(ValueError, match="interpolation 'lanczos9'"):
        Preprocess(interpolation="lanczos9")
    with pytest.raises(ValueError, match="lacks"):
        Preprocess.from_dict({"mean": [0, 0, 0]})


def test_bgr_to_rgb():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    rgb = bgr_to_rgb(bgr)
    assert rgb[0, 0].tolist() == [0, 0, 10] and rgb.flags["C_CONTIGUOUS"]


def test_north_up_turns_a_rendered_view_back_to_the_tile(naip_paths):
    """A view whose top faces any heading, turned north-up, shows the north-up tile (where it saw it)."""
    from runtime.engines.preprocess import north_up
    from tiles.raster import open_raster
    from tiles.views import CameraPose, render_view

    with open_raster(naip_paths[2018]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        x, y = xmin + 2000.0, ymin + 1500.0
        ref = render_view(r, CameraPose(x, y, 300, 0, 0, 60), (128, 128)).image.astype(float)
        for heading in (30.0, 90.0, 200.0):
            view = render_view(r, CameraPose(x, y, 300, heading, 0, 60), (128, 128)).image
            up = north_up(view, heading).astype(float)
            seen = up.sum(axis=2) > 0
            assert seen.mean() > 0.8
            if heading % 90:
                assert seen.mean() < 0.97  # corners the camera did not see are black
            inner = np.zeros_like(seen)
            inner[20:108, 20:108] = True
            err = np.abs(up - ref)[seen & inner].mean()
            wrong = np.abs(north_up(view, -heading).astype(float) - ref)[seen & inner].mean()
            assert err < 6 and wrong > 3 * err  # the right direction, and it matters
    assert north_up(ref.astype(np.uint8), None) is not None
