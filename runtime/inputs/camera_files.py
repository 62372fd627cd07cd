"""Camera calibration files users already have, read with OpenCV's own parser (no YAML library needed).

Two layouts are understood, in YAML, JSON or XML:

- **OpenCV** (what ``cv2.FileStorage`` writes after ``cv2.calibrateCamera``, e.g. OpenCV's calibration
  sample): ``camera_matrix`` (3x3 ``opencv-matrix``), ``distortion_coefficients`` (4, 5, 8, 12 or 14
  values), ``image_width``, ``image_height``; an optional ``distortion_model`` (``fisheye`` or
  ``equidistant`` for ``cv2.fisheye``; anything else is the standard pinhole model).
- **ROS** ``sensor_msgs/CameraInfo``: either the message as ``rostopic echo`` / ``ros2 topic echo`` prints
  it (``width``, ``height``, ``K``/``k``, ``D``/``d``, ``distortion_model``), or the file
  ``camera_calibration`` writes (``image_width``, ``image_height``, ``camera_matrix.data``,
  ``distortion_coefficients.data``, ``distortion_model``). ``plumb_bob`` and ``rational_polynomial`` are
  OpenCV's pinhole model; ``equidistant`` is its fisheye model.

:func:`read_calibration` returns plain values (``width``, ``height``, ``K`` 3x3, ``dist``, ``model``,
``layout``); :class:`runtime.inputs.camera.CameraModel` is built from them. Every error names the file
and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PINHOLE_MODELS = ("plumb_bob", "rational_polynomial", "pinhole", "radtan", "")
FISHEYE_MODELS = ("equidistant", "fisheye", "kannala_brandt")
PINHOLE_DIST_SIZES = (4, 5, 8, 12, 14)


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file, the field and the fix."""


def _storage(path: Path):
    import cv2

    if not path.is_file():
        raise CalibrationError(f"{path}: no such camera calibration file (give an OpenCV calibration "
                               "YAML/JSON or a ROS camera_info YAML)")
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    body = [ln for ln in lines if not ln.startswith("%YAML")]
    while body and body[-1].strip() in ("", "---", "..."):
        body.pop()  # the document end `ros2 topic echo` prints
    if "---" in [ln.strip() for ln in body[1:]]:
        body = body[:[ln.strip() for ln in body].index("---", 1)]  # several messages echoed: the first
    body = _indent_block_lists(body)
    try:
        fs = cv2.FileStorage("\n".join(body) + "\n", cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
    except cv2.error as e:
        raise CalibrationError(f"{path}: not a YAML/JSON/XML file OpenCV can parse ({str(e).strip()[:120]})") \
            from None
    except Exception as e:  # OpenCV's Python binding raises SystemError on some parse failures
        raise CalibrationError(f"{path}: not a YAML/JSON/XML file OpenCV can parse ({type(e).__name__})") from None
    if not fs.isOpened() or fs.root().empty():
        raise CalibrationError(f"{path}: empty, or not a YAML/JSON/XML file OpenCV can parse")
    return fs


def _indent_block_lists(lines: list[str]) -> list[str]:
    """``key:`` followed by ``- item`` lines at the key's own indentation (how ``ros2 topic echo`` prints a
    list) indented one step, the only form of a YAML block list OpenCV's parser reads."""
    out, key_indent = [], None
    for ln in lines:
        indent = len(ln) - len(ln.lstrip())
        if ln.lstrip().startswith("- ") and key_indent is not None and indent == key_indent:
            out.append("  " + ln)
            continue
        stripped = ln.strip()
        key_indent = indent if stripped.endswith(":") and not stripped.startswith("- ") else None
        out.append(ln)
    return out


def _numbers(path: Path, node, field: str) -> np.ndarray:
    """The numbers of a node: an ``opencv-matrix``, a sequence, or a map with ``data`` (ROS files)."""
    if node.empty():
        raise CalibrationError(f"{path}: field {field!r} is missing")
    if node.isMap() and not node.getNode("data").empty() and node.getNode("dt").empty():
        node = node.getNode("data")
    if node.isSeq():
        vals = [node.at(i).real() for i in range(node.size())]
    elif node.isMap():
        mat = node.mat()
        if mat is None:
            raise CalibrationError(f"{path}: field {field!r} is a map but not a matrix")
        vals = list(np.asarray(mat, float).ravel())
    elif node.isReal() or node.isInt():
        vals = [node.real()]
    else:
        raise CalibrationError(f"{path}: field {field!r} holds no numbers")
    arr = np.asarray(vals, float)
    if not np.all(np.isfinite(arr)):
        raise CalibrationError(f"{path}: field {field!r} holds a NaN or infinite value: {vals}")
    return arr


def _integer(path: Path, node, field: str) -> int:
    v = _numbers(path, node, field)
    if v.size != 1 or v[0] <= 0 or v[0] != int(v[0]):
        raise CalibrationError(f"{path}: field {field!r} must be a positive whole number of pixels, got {list(v)}")
    return int(v[0])


def _first(root, names):
    for n in names:
        node = root.getNode(n)
        if not node.empty():
            return n, node
    return names[0], root.getNode(names[0])


def _model(path: Path, name: str, field: str) -> str:
    key = name.strip().lower()
    if key in FISHEYE_MODELS:
        return "fisheye"
    if key in PINHOLE_MODELS:
        return "pinhole"
    raise CalibrationError(f"{path}: field {field!r} is {name!r}: use plumb_bob or rational_polynomial "
                           "(OpenCV's pinhole model) or equidistant (its fisheye model)")


def read_calibration(path: str | os.PathLike) -> dict:
    """``{"width", "height", "K" (3x3), "dist", "model" ("pinhole"|"fisheye"), "layout" ("opencv"|"ros")}``
    from an OpenCV or ROS calibration file (see the module docstring)."""
    path = Path(path)
    fs = _storage(path)  # kept alive while its nodes are read
    root = fs.root()
    if not root.getNode("camera_matrix").empty():
        layout = "opencv"
        w_name, w_node = _first(root, ("image_width", "width"))
        h_name, h_node = _first(root, ("image_height", "height"))
        k_name, k_node = "camera_matrix", root.getNode("camera_matrix")
        d_name, d_node = _first(root, ("distortion_coefficients", "dist_coeffs", "D", "d"))
    elif not _first(root, ("K", "k"))[1].empty():
        layout = "ros"
        w_name, w_node = "width", root.getNode("width")
        h_name, h_node = "height", root.getNode("height")
        k_name, k_node = _first(root, ("K", "k"))
        d_name, d_node = _first(root, ("D", "d"))
    else:
        raise CalibrationError(
            f"{path}: neither an OpenCV calibration (camera_matrix, distortion_coefficients, image_width, "
            "image_height) nor a ROS camera_info (width, height, K, D, distortion_model): field "
            "'camera_matrix' / 'K' is missing")
    width, height = _integer(path, w_node, w_name), _integer(path, h_node, h_name)
    K = _numbers(path, k_node, k_name)
    if K.size != 9:
        raise CalibrationError(f"{path}: field {k_name!r} has {K.size} values, a camera matrix has 9 (3x3)")
    K = K.reshape(3, 3)
    dm_node = root.getNode("distortion_model")
    model = _model(path, dm_node.string() if not dm_node.empty() else "", "distortion_model")
    dist = np.zeros(0) if d_node.empty() and layout == "ros" else _numbers(path, d_node, d_name)
    _check_values(path, K, dist, model, k_name, d_name, width, height)
    fs.release()
    return {"width": width, "height": height, "K": K, "dist": dist, "model": model, "layout": layout}


def _check_values(path, K, dist, model, k_name, d_name, width, height) -> None:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (fx > 0 and fy > 0) or K[2, 2] != 1 or K[1, 0] or K[2, 0] or K[2, 1]:
        raise CalibrationError(f"{path}: field {k_name!r} is not a camera matrix [[fx, s, cx], [0, fy, cy], "
                               f"[0, 0, 1]] with fx, fy > 0: {K.tolist()}")
    if not (0 < cx < width and 0 < cy < height):
        raise CalibrationError(f"{path}: field {k_name!r} puts the principal point ({cx:g}, {cy:g}) outside the "
                               f"{width}x{height} image: is the file for another resolution?")
    if model == "fisheye" and dist.size != 4:
        raise CalibrationError(f"{path}: field {d_name!r} has {dist.size} values; the fisheye (equidistant) "
                               "model has 4 (k1, k2, k3, k4)")
    if model == "pinhole" and dist.size not in (0, *PINHOLE_DIST_SIZES):
        raise CalibrationError(f"{path}: field {d_name!r} has {dist.size} values; OpenCV's pinhole model takes "
                               f"{', '.join(map(str, PINHOLE_DIST_SIZES))} (k1, k2, p1, p2[, k3, ...])")
