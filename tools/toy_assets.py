"""Test helper: a tiny real model bundle and a tiny real tile database from the bundled NAIP imagery.

``make_bundle(dir)`` exports timm's ``test_efficientnet`` (random weights, seeded) with torch.onnx, the
output L2-normalised in the graph, and writes the manifest through ``runtime.engines.bundle``. The model
fingerprint is the hash of a checkpoint file saved beside it, as CONTRACTS.md §4 says.
``make_tile_db(engine, dir, raster)`` cuts a grid of tiles from a NAIP GeoTIFF (rasterio directly),
embeds them with the runtime engine and writes a database with ``tiles.db.write_database``.
``write_flight_video(path, raster, ...)`` writes a short video (cv2.VideoWriter) of crops along a line.

torch, timm and rasterio are imported inside the functions: tests that only use a made bundle do not
pay for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAIP_DIR = REPO / "data" / "naip"


def naip_files() -> dict[int, Path]:
    """Bundled NAIP GeoTIFFs by year."""
    return {int(p.stem.rsplit("_", 1)[-1][:4]): p for p in sorted(NAIP_DIR.glob("*.tif"))}

INPUT_PX = 64
# the height at which a 60-degree camera sees a 64 px tile of the 5 m NAIP image (320 m): the thumbnail
# database's layer, so that the odometry's metres and the tiles' agree
THUMB_ALTITUDE_M = 64 * 5.0 / (2.0 * 0.5773502691896257)


def make_bundle(
    out_dir: str | os.PathLike,
    *,
    model_name: str = "test_efficientnet",
    input_px: int = INPUT_PX,
    uint8_input: bool = False,
    seed: int = 0,
) -> Path:
    """Export a timm model (random weights), or ``"thumbnail"`` (:class:`Thumbnail`), to
    ``out_dir/model.onnx`` with a manifest; returns out_dir."""
    import timm
    import torch

    from runtime.engines.bundle import new_manifest, write_manifest
    from runtime.engines.preprocess import Preprocess
    from tiles.io import atomic_path, file_sha256

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if model_name == "thumbnail":
        backbone = thumbnail_model()
        cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    else:
        backbone = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
        cfg = timm.data.resolve_data_config(model=backbone)
    interp = cfg.get("interpolation", "bilinear")
    pre = Preprocess(input_size=(input_px, input_px), mean=cfg["mean"], std=cfg["std"],
                     interpolation=interp if interp in ("bilinear", "bicubic") else "bilinear")

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = backbone
            self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, x):
            if uint8_input:  # NHWC uint8 in, normalisation inside the graph
                x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
            return torch.nn.functional.normalize(self.m(x), dim=1)

    model = Embed().eval()
    ckpt = out_dir.parent / f".{out_dir.name}.checkpoint.pt"
    torch.save({"model_name": model_name, "state_dict": backbone.state_dict()}, ckpt)
    fingerprint = file_sha256(ckpt)[:16]
    if uint8_input:
        example = torch.zeros(2, input_px, input_px, 3, dtype=torch.uint8)
    else:
        example = torch.zeros(2, 3, input_px, input_px)
    with atomic_path(out_dir / "model.onnx") as tmp, torch.no_grad():
        torch.onnx.export(model, (example,), os.fspath(tmp), input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    with torch.no_grad():
        dim = int(model(example).shape[1])
    manifest = new_manifest(
        model_name=model_name,
        embedding_dim=dim,
        model_fingerprint=fingerprint,
        preprocess=pre.to_dict(),
        input={"name": "image", "dtype": "uint8" if uint8_input else "float32",
               "layout": "NHWC" if uint8_input else "NCHW"},
        output={"name": "embedding"},
        source_checkpoint={"path": str(ckpt), "sha256": file_sha256(ckpt)},
        files=[{"path": "model.onnx", "kind": "onnx", "precision": "fp32",
                "sha256": file_sha256(out_dir / "model.onnx")}],
    )
    write_manifest(out_dir, manifest)
    return out_dir


def thumbnail_model(side: int = 8):
    """A descriptor without learning: the grey level of the frame's central half (inside the circle a frame
    turned north-up keeps: no black corners) averaged over ``side`` x ``side`` cells, its mean removed
    (L2-normalised by the bundle's graph). It finds a view of the map's own image on the map (the same
    pixels, no season or year between them), which is what tests of the flight chain need from a model:
    fixes that the map filter trusts, on imagery a test can generate, with a real ONNX file."""
    import torch

    q = INPUT_PX // 4  # the input is INPUT_PX square: its central half, pooled in cells of (INPUT_PX / 2) / side

    class Thumbnail(torch.nn.Module):
        def forward(self, x):
            grey = x[:, :, q:INPUT_PX - q, q:INPUT_PX - q].mean(dim=1, keepdim=True)
            t = torch.nn.functional.avg_pool2d(grey, (INPUT_PX // 2) // side).flatten(1)
            return t - t.mean(dim=1, keepdim=True)

    return Thumbnail().eval()


def read_rgb(raster_path: str | os.PathLike) -> tuple[np.ndarray, object, str]:
    """The whole (small) NAIP raster as RGB uint8 (H, W, 3), its affine transform and CRS string."""
    import rasterio

    with rasterio.open(raster_path) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        return np.ascontiguousarray(rgb), src.transform, src.crs.to_string()


def make_tile_db(
    engine,
    out_dir: str | os.PathLike,
    raster_path: str | os.PathLike,
    *,
    tile_px: int = 64,
    stride_px: int = 32,
    altitudes_m: tuple[float, ...] = (150.0,),
    hfov_deg: float = 60.0,
    overwrite: bool = False,
) -> Path:
    """A database of square tiles on a pixel grid of the raster, one layer per altitude (same tiles)."""
    from pyproj import Transformer

    from tiles.db import empty_entries, write_database
    from tiles.io import file_sha256

    rgb, transform, crs = read_rgb(raster_path)
    gsd_m = float(transform.a)
    h, w = rgb.shape[:2]
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    crops, rows = [], []
    for r in range(0, h - tile_px + 1, stride_px):
        for c in range(0, w - tile_px + 1, stride_px):
            crops.append(rgb[r:r + tile_px, c:c + tile_px])
            rows.append((r, c))
    emb = np.concatenate(list(engine.embed_batches(crops, batch_size=64)))
    all_emb, all_entries, layers = [], [], []
    for li, alt in enumerate(altitudes_m):
        e = empty_entries(len(crops))
        for i, (r, c) in enumerate(rows):
            x, y = transform @ (c + tile_px / 2, r + tile_px / 2)
            lon, lat = to_wgs84.transform(x, y)
            e[i] = (f"a{int(alt)}_r{r:04d}_c{c:04d}", li, True, x, y, lat, lon, tile_px * gsd_m, alt,
                    c, r, tile_px, tile_px, 0)
        all_emb.append(emb)
        all_entries.append(e)
        layers.append({"name": f"alt{int(alt)}", "altitude_m": alt, "hfov_deg": hfov_deg,
                       "footprint_m": tile_px * gsd_m, "stride_m": stride_px * gsd_m, "tile_px": tile_px})
    return write_database(
        out_dir, np.concatenate(all_emb), np.concatenate(all_entries), layers=layers,
        model={"fingerprint": engine.model_fingerprint, "name": engine.bundle.manifest["model_name"],
               "embedding_dim": engine.embedding_dim},
        preprocess=engine.preprocess.to_dict(), crs=crs,
        sources=[{"name": Path(raster_path).name, "sha256": file_sha256(raster_path)}], overwrite=overwrite,
    )


def flight_crops(raster_path, n_frames: int = 12, crop_px: int = 64, out_px: int = 96):
    """Crops along a diagonal line over the raster: list of (rgb (out_px, out_px, 3), (x, y) centre)."""
    import cv2

    rgb, transform, _ = read_rgb(raster_path)
    h, w = rgb.shape[:2]
    out = []
    for i in range(n_frames):
        f = i / max(1, n_frames - 1)
        c = int(crop_px // 2 + f * (w - crop_px - 1) * 0.8)
        r = int(crop_px // 2 + f * (h - crop_px - 1) * 0.8)
        crop = rgb[r - crop_px // 2:r + crop_px // 2, c - crop_px // 2:c + crop_px // 2]
        out.append((cv2.resize(crop, (out_px, out_px), interpolation=cv2.INTER_LINEAR), transform @ (c, r)))
    return out


def write_flight_video(path: str | os.PathLike, raster_path, n_frames: int = 12, fps: float = 10.0,
                       out_px: int = 96) -> list[tuple[float, float]]:
    """An MJPG .avi of crops along a line (frames RGB->BGR for OpenCV); returns the ground centres."""
    import cv2

    crops = flight_crops(raster_path, n_frames=n_frames, out_px=out_px)
    vw = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (out_px, out_px))
    if not vw.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    for img, _ in crops:
        vw.write(np.ascontiguousarray(img[:, :, ::-1]))
    vw.release()
    return [xy for _, xy in crops]


_ASSETS: dict = {}


def tiny_assets() -> dict:
    """Built once per test process (cached): {"bundle", "bundle_u8", "db", "raster", "root", "bundle_thumb",
    "db_thumb"} paths.

    The database is cut from the 2020 NAIP image at two altitudes with the float32-input bundle. The
    uint8-input bundle has the same weights (same seed) but its own checkpoint file, so its fingerprint
    differs from the database's. ``bundle_thumb`` is :func:`thumbnail_model`, with its database
    ``db_thumb`` of the 2020 image's tiles every 8 px at ``thumb_altitude_m``, the height at which a
    60-degree camera sees a tile's 320 m: flights of :func:`flight_crops` there get trusted fixes.
    """
    if _ASSETS:
        return _ASSETS
    import atexit
    import shutil
    import tempfile

    from runtime.engines.engine import load_engine

    root = Path(tempfile.mkdtemp(prefix="geoloc-runtime-"))
    atexit.register(shutil.rmtree, root, True)
    raster = naip_files()[2020]
    bundle = make_bundle(root / "bundle")
    bundle_u8 = make_bundle(root / "bundle_u8", uint8_input=True)
    db = make_tile_db(load_engine(bundle), root / "db", raster, altitudes_m=(150.0, 300.0))
    thumb = make_bundle(root / "bundle_thumb", model_name="thumbnail")
    db_thumb = make_tile_db(load_engine(thumb), root / "db_thumb", raster, altitudes_m=(THUMB_ALTITUDE_M,),
                            stride_px=8)
    _ASSETS.update(bundle=bundle, bundle_u8=bundle_u8, db=db, raster=raster, root=root, bundle_thumb=thumb,
                   db_thumb=db_thumb, thumb_altitude_m=THUMB_ALTITUDE_M)
    return _ASSETS
