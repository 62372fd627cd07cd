"""Where the camera points: the airframe's attitude, the camera mount, and the camera's rotation in the world.

Frames and conventions (those of MAVLink, so what the autopilot sends is used as it comes):

- The world is NED (x north, y east, z down); the airframe is FRD (x forward, y right, z down). The body
  attitude is MAVLink ``ATTITUDE``'s roll, pitch, yaw: ``R_world_body = Rz(yaw) Ry(pitch) Rx(roll)``.
- A camera holder (a fixed mount or a gimbal) has its own FRD frame whose x is the optical axis, y the image
  right and z the image down: MAVLink's gimbal frame. Its angles follow the gimbal convention: pitch -90
  degrees looks straight down with the image top towards the holder's forward direction.
- The camera frame is OpenCV's (x image right, y image down, z optical axis): ``R_world_camera`` turns a
  ray in the camera frame (e.g. :meth:`runtime.inputs.camera.CameraModel.pixel_rays`) into NED.

A :class:`CameraMount` is ``fixed`` (roll, pitch, yaw of the camera relative to the body; default pitch
-90: nadir, image top to the nose) or ``gimbal`` (the gimbal reports its own attitude,
``GIMBAL_DEVICE_ATTITUDE_STATUS``: roll and pitch against the horizon, yaw against north or the vehicle's
heading as its flags say). :class:`CameraAttitude` holds ``R_world_camera`` and reads it back as *view
angles* relative to nadir, free of the gimbal lock Euler angles have at nadir: ``heading_deg`` (the compass
direction of the image top), ``tilt_deg`` (the optical axis pitched from nadir towards the image top),
``roll_deg`` (then towards the image right). These are the angles of :class:`tiles.views.CameraPose`.
numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# a vector in the OpenCV camera frame -> the same vector in the holder's FRD (x optical axis, y right, z down)
GIMBAL_FROM_CAMERA = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
MOUNTS = ("fixed", "gimbal")


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def euler_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """``Rz(yaw) Ry(pitch) Rx(roll)`` (radians; aerospace Z-Y-X, as MAVLink ``ATTITUDE``)."""
    return rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)


def matrix_euler(R) -> tuple[float, float, float]:
    """(roll, pitch, yaw) radians of a rotation (the inverse of :func:`euler_matrix`, pitch in [-90, 90])."""
    R = np.asarray(R, float)
    pitch = -math.asin(max(-1.0, min(1.0, R[2, 0])))
    return math.atan2(R[2, 1], R[2, 2]), pitch, math.atan2(R[1, 0], R[0, 0])


def quaternion_matrix(q) -> np.ndarray:
    """The rotation of a quaternion (w, x, y, z) (normalised here; MAVLink's order)."""
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not n > 1e-9 or not math.isfinite(n):
        raise ValueError(f"quaternion {tuple(q)} has no rotation (zero or NaN)")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_quaternion(R) -> np.ndarray:
    """The unit quaternion (w, x, y, z), w >= 0, of a rotation matrix."""
    R = np.asarray(R, float)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1e-12, 1.0 + R[i, i] - R[j, j] - R[k, k]))
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


@dataclass(frozen=True)
class CameraAttitude:
    """The camera's rotation in the world: ``R`` = ``R_world_camera`` (NED from the OpenCV camera frame)."""

    R: tuple

    def __post_init__(self):
        R = np.asarray(self.R, float)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError(f"a camera attitude must be a 3x3 rotation matrix, got {self.R!r}")
        object.__setattr__(self, "R", tuple(tuple(float(v) for v in row) for row in R))

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self.R, float)

    @classmethod
    def nadir(cls, heading_deg: float = 0.0) -> CameraAttitude:
        return cls.from_view_angles(heading_deg, 0.0, 0.0)

    @classmethod
    def from_view_angles(cls, heading_deg: float, tilt_deg: float = 0.0, roll_deg: float = 0.0) -> CameraAttitude:
        """From the view angles (see the module docstring; those of :class:`tiles.views.CameraPose`)."""
        h, t, r = (math.radians(v) for v in (heading_deg, tilt_deg, roll_deg))
        fwd = np.array([math.cos(h), math.sin(h), 0.0])
        right_h = np.array([-math.sin(h), math.cos(h), 0.0])
        axis0 = math.cos(t) * np.array([0, 0, 1.0]) + math.sin(t) * fwd
        up = math.cos(t) * fwd + math.sin(t) * np.array([0, 0, -1.0])
        axis = math.cos(r) * axis0 + math.sin(r) * right_h
        right = math.cos(r) * right_h - math.sin(r) * axis0
        return cls(np.stack([right, -up, axis], axis=1))

    def view_angles(self) -> tuple[float, float, float]:
        """(heading_deg in [0, 360), tilt_deg, roll_deg): the inverse of :meth:`from_view_angles` (unique
        while the image top is below the horizon, i.e. |tilt| < 90)."""
        R = self.matrix
        right, up = R[:, 0], -R[:, 1]
        t = math.asin(max(-1.0, min(1.0, -up[2])))
        h = math.atan2(up[1], up[0])
        right_h = np.array([-math.sin(h), math.cos(h), 0.0])
        r = math.atan2(-right[2] / max(math.cos(t), 1e-12), float(right @ right_h))
        return math.degrees(h) % 360.0, math.degrees(t), math.degrees(r)

    @property
    def optical_axis(self) -> np.ndarray:
        """The optical axis in NED (unit)."""
        return self.matrix[:, 2]

    @property
    def tilt_deg(self) -> float:
        """The angle between the optical axis and straight down (0 = nadir), whatever its direction."""
        return math.degrees(math.acos(max(-1.0, min(1.0, float(self.optical_axis[2])))))


@dataclass(frozen=True)
class CameraMount:
    """How the camera is held (see the module docstring). ``fixed``: ``roll_deg``, ``pitch_deg``,
    ``yaw_deg`` of the camera relative to the body (gimbal convention: pitch -90 = nadir); ``gimbal``: the
    angles come from the gimbal with each frame (the fixed angles then serve as its attitude when it has
    not reported yet)."""

    kind: str = "fixed"
    roll_deg: float = 0.0
    pitch_deg: float = -90.0
    yaw_deg: float = 0.0

    def __post_init__(self):
        if self.kind not in MOUNTS:
            raise ValueError(f"camera mount {self.kind!r} is not one of {MOUNTS} (fixed: give its roll, pitch, "
                             "yaw; gimbal: the gimbal reports them)")
        for name in ("roll_deg", "pitch_deg", "yaw_deg"):
            v = float(getattr(self, name))
            if not math.isfinite(v):
                raise ValueError(f"camera mount {name} must be a finite angle in degrees, got {v}")

    def holder_in_body(self) -> np.ndarray:
        """``R_body_holder`` of the fixed angles."""
        return euler_matrix(*(math.radians(v) for v in (self.roll_deg, self.pitch_deg, self.yaw_deg)))

    def camera_attitude(self, body_R, gimbal_q=None, gimbal_yaw_in_earth: bool = False) -> CameraAttitude:
        """The camera's attitude from the body's (``R_world_body``, e.g. :func:`euler_matrix` of
        ``ATTITUDE``) and, for a gimbal, its quaternion (w, x, y, z): roll/pitch against the horizon, yaw
        against north when ``gimbal_yaw_in_earth`` else against the body's heading."""
        body_R = np.asarray(body_R, float)
        if self.kind == "gimbal" and gimbal_q is not None:
            holder = quaternion_matrix(gimbal_q)
            if not gimbal_yaw_in_earth:
                holder = rot_z(matrix_euler(body_R)[2]) @ holder
        else:
            holder = body_R @ self.holder_in_body()
        return CameraAttitude(holder @ GIMBAL_FROM_CAMERA)


def camera_attitude_deg(roll_deg: float, pitch_deg: float, yaw_deg: float,
                        mount: CameraMount | None = None, gimbal_q=None,
                        gimbal_yaw_in_earth: bool = False) -> CameraAttitude:
    """:meth:`CameraMount.camera_attitude` from the body's roll, pitch, yaw in degrees (default mount:
    fixed, nadir)."""
    body = euler_matrix(*(math.radians(v) for v in (roll_deg, pitch_deg, yaw_deg)))
    return (mount or CameraMount()).camera_attitude(body, gimbal_q, gimbal_yaw_in_earth)
