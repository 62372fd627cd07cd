"""tiles.views.render_view through a lens and over relief (ray by ray), on the real NAIP imagery."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.inputs.camera import CameraModel
from tiles.raster import open_raster
from tiles.view_rays import intersect_terrain
from tiles.views import CameraPose, ground_to_image, render_view

SIZE = (192, 192)


def _corr(a, b):
    return float(np.corrcoef(a.astype(float).mean(2).ravel(), b.astype(float).mean(2).ravel())[0, 1])


def _sharpness(image):
    """The variance of the grey image's Laplacian, away from the border."""
    import cv2

    return float(cv2.Laplacian(image.astype(np.float32).mean(2), cv2.CV_32F)[8:-8, 8:-8].var())


@pytest.fixture(scope="module")
def naip(naip_paths):
    with open_raster(naip_paths[2018]) as r:
        xmin, ymin, xmax, ymax = r.bounds_m
        yield r, (xmin + xmax) / 2 + 120, (ymin + ymax) / 2 - 340


def test_ray_rendering_equals_the_homography_on_flat_ground(naip):
    r, x, y = naip
    for pose in (CameraPose(x, y, 150, 30, 0, 60), CameraPose(x, y, 150, 200, -12, 60, roll_deg=9)):
        flat = render_view(r, pose, SIZE)
        rays = render_view(r, pose, SIZE, terrain=lambda gx, gy: np.zeros_like(gx))
        assert _corr(flat.image, rays.image) > 0.97
        assert np.allclose(flat.corners_xy, rays.corners_xy, atol=1e-6)
        assert np.allclose(flat.centre_xy, rays.centre_xy, atol=1e-6)
        lens = render_view(r, pose, SIZE, lens=CameraModel.from_hfov(*SIZE, 60))  # a distortion-free lens
        assert _corr(flat.image, lens.image) > 0.999
        # as sharp as the homography's single resampling: the map read at the view's spacing, not the raster's
        for view in (rays, lens):
            assert _sharpness(view.image) > 0.9 * _sharpness(flat.image)


def test_a_plateau_is_the_flat_view_from_lower_down(naip):
    """Ground raised 40 m everywhere: from 150 m above the datum the view is the flat view from 110 m."""
    r, x, y = naip
    up = render_view(r, CameraPose(x, y, 150, 60, 10, 60), SIZE, terrain=lambda gx, gy: np.full_like(gx, 40.0))
    low = render_view(r, CameraPose(x, y, 110, 60, 10, 60), SIZE)
    high = render_view(r, CameraPose(x, y, 150, 60, 10, 60), SIZE)
    assert _corr(up.image, low.image) > 0.97
    assert _corr(up.image, high.image) < 0.7
    assert np.allclose(up.centre_xy, low.centre_xy, atol=1e-6)


def test_relief_is_found_by_every_ray_and_seen_where_the_geometry_says(naip):
    """A hill: each ray's ground point lies on the terrain; a ground point on the hill's flank projects
    to where the ray through that pixel lands."""
    r, x, y = naip

    def hill(gx, gy):
        return 45.0 * np.exp(-((gx - x - 30) ** 2 + (gy - y - 20) ** 2) / (2 * 60.0 ** 2))

    pose = CameraPose(x, y, 180, 0, 15, 60, roll_deg=-5)
    from tiles.views import camera_rays

    u, v = np.meshgrid(np.linspace(1, SIZE[0] - 1, 15), np.linspace(1, SIZE[1] - 1, 15))
    rays = camera_rays(pose, SIZE, u, v)
    g = intersect_terrain((x, y, 180.0), rays, hill)
    t = (g[:, 0] - x) / rays[:, 0]  # distance along each ray to its ground point
    z = 180.0 + t * rays[:, 2]
    assert np.allclose(z, hill(g[:, 0], g[:, 1]), atol=0.01)
    flat = intersect_terrain((x, y, 180.0), rays, None)
    moved = np.hypot(*(g - flat).T)
    assert moved.max() > 10  # the hill pulls the ground points towards the camera
    view = render_view(r, pose, SIZE, terrain=hill)
    assert view.valid_fraction > 0.99
    # a pixel's ground point, projected back as if it were on a plane at its own height, is that pixel
    gx, gy = g[112], g[112]
    zp = hill(np.array([gx[0]]), np.array([gy[1]]))[0]
    lowered = CameraPose(x, y, 180 - zp, 0, 15, 60, roll_deg=-5)
    assert ground_to_image(lowered, SIZE, gx[0], gy[1])[0] == pytest.approx([u.ravel()[112], v.ravel()[112]],
                                                                               abs=1e-6)


def test_lens_must_match_the_view_size(naip):
    r, x, y = naip
    with pytest.raises(ValueError, match="calibrated for 320x240"):
        render_view(r, CameraPose(x, y, 150), SIZE, lens=CameraModel.from_hfov(320, 240, 60))


def test_pose_takes_attitude_both_ways_but_not_the_horizon():
    CameraPose(0, 0, 100, 0, -20, 60, roll_deg=-30)
    with pytest.raises(ValueError, match="roll_deg"):
        CameraPose(0, 0, 100, 0, 0, 60, roll_deg=85)
    with pytest.raises(ValueError, match="tilt_deg"):
        CameraPose(0, 0, 100, 0, -80, 60)
