"""The one definition of image preprocessing, shared by training, export, the tile database and the runtime.

Every path that turns an image into a model input calls :class:`Preprocess`: training evaluation, INT8
calibration, tile-database building and the onboard service. Its parameters travel in every artifact
(checkpoint, model bundle, tile database) as :meth:`Preprocess.to_dict`, and the runtime rebuilds it from
there; nothing downstream hard-codes a size, a mean or an interpolation.

Input images are RGB ``uint8`` arrays of shape ``(H, W, 3)``. OpenCV reads BGR: convert once with
:func:`bgr_to_rgb` at the source, never inside the model path.

Numpy and OpenCV only: this module flies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cv2():
    import cv2  # local import: the database reader and manifests must not need OpenCV

    return cv2


def _cv2_flag(interpolation: str) -> int:
    cv2 = _cv2()
    return {
        "bilinear": cv2.INTER_LINEAR,
        "bicubic": cv2.INTER_CUBIC,
        "area": cv2.INTER_AREA,
        "nearest": cv2.INTER_NEAREST,
    }[interpolation]


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) frame to contiguous RGB uint8."""
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a colour image of shape (H, W, 3|4), got {image.shape}")
    return np.ascontiguousarray(image[:, :, 2::-1])


def north_up(image: np.ndarray, heading_deg: float | None) -> np.ndarray:
    """Rotate a nadir frame so that north is up, given the compass heading the image top faces.

    Map tiles are north-up; a drone's camera points wherever the airframe (or gimbal) points. The
    autopilot knows that heading from its compass without any GPS, so the frame is turned about its centre
    by the heading: same size, same scale (the ground square it shows is still the camera footprint,
    centred under the drone), and the corners the camera did not see become black (up to 17 % of the
    image at 45 degrees). Training renders views at every heading and applies this same function with a
    compass error, so the model learns exactly what it will be shown. ``None`` or NaN: returned as is.
    """
    if heading_deg is None or not np.isfinite(heading_deg) or abs(float(heading_deg) % 360.0) < 1e-6:
        return image
    cv2 = _cv2()
    h, w = image.shape[:2]
    # the image top faces `heading` (clockwise from north): turning the picture clockwise by the heading
    # brings north to the top; OpenCV's positive angle is counter-clockwise, hence the minus
    m = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), -float(heading_deg), 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``input_size`` (height, width), scale to [0, 1], normalise with ``mean``/``std``, CHW.

    ``interpolation`` names the resize filter ('bilinear', 'bicubic', 'area', 'nearest'), applied by
    OpenCV to uint8 RGB. Training uses the very same resize, so there is no train/deploy filter gap.
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    version: int = field(default=1, compare=True)

    def __post_init__(self):
        size = tuple(int(v) for v in (self.input_size if not isinstance(self.input_size, int)
                                      else (self.input_size, self.input_size)))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be (height, width) in pixels, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            val = tuple(float(v) for v in getattr(self, name))
            if len(val) != 3:
                raise ValueError(f"{name} needs 3 values (R, G, B), got {getattr(self, name)!r}")
            object.__setattr__(self, name, val)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}; "
                "timm's 'bicubic'/'bilinear' map directly"
            )

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        missing = {"input_size", "mean", "std", "interpolation"} - set(d)
        if missing:
            raise ValueError(f"preprocessing record lacks {sorted(missing)}: {d!r}")
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d["interpolation"],
            version=int(d.get("version", 1)),
        )

    def fingerprint(self) -> str:
        """Short stable hash of the parameters; equal parameters give equal fingerprints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def diff(self, other: Preprocess) -> list[str]:
        """Human-readable list of the fields that differ (empty when equal)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b.get(k)]

    # ---- application ---------------------------------------------------------------------------
    def resize(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> RGB uint8 at ``input_size``. Grey or RGBA inputs are converted."""
        image = _as_rgb_uint8(image)
        h, w = self.input_size
        if image.shape[:2] == (h, w):
            return image
        return _cv2().resize(image, (w, h), interpolation=_cv2_flag(self.interpolation))

    def normalize(self, resized: np.ndarray) -> np.ndarray:
        """RGB uint8 (..., H, W, 3) at input size -> float32 (..., 3, H, W) normalised."""
        scale = np.asarray(self.std, np.float32) * 255.0
        x = (resized.astype(np.float32) - np.asarray(self.mean, np.float32) * 255.0) / scale
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image -> float32 (3, H, W)."""
        return self.normalize(self.resize(image))

    def batch(self, images) -> np.ndarray:
        """A sequence of RGB uint8 images -> float32 (N, 3, H, W)."""
        images = list(images)
        if not images:
            h, w = self.input_size
            return np.zeros((0, 3, h, w), np.float32)
        return self.normalize(np.stack([self.resize(im) for im in images]))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 RGB, got dtype {image.dtype}; scale to 0..255 first "
            "(tiles.raster does this for 16-bit and float rasters)"
        )
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
