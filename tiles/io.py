"""Small file helpers shared by every part: atomic writes and content hashes (stdlib only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (works for files larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore (not atomic across threads)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file or folder under the user's umask.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask, so an artifact written through
    a temporary file would be unreadable by another user (the service's account on the drone) unless
    its mode is set back to this one before the rename."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is synced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched, so a reader never sees a
    half-written file under the final name::

        with atomic_path(out / "model.onnx") as tmp:
            torch.onnx.export(..., tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_versioned_json(mpath: Path, fmt: str, version: int, error: type[Exception], fix: str) -> dict:
    """The metadata file ``mpath`` of an artifact written as ``fmt`` version ``version``; ``error`` (the
    artifact's exception) saying ``fix`` when it is not JSON or another format or version."""
    try:
        meta = json.loads(Path(mpath).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{mpath} is not valid JSON ({e}); {fix}") from e
    info = meta if isinstance(meta, dict) else {}
    if info.get("format") != fmt or info.get("format_version") != version:
        raise error(f"{mpath}: format {info.get('format')!r} version {info.get('format_version')!r}, this reader "
                    f"understands {fmt!r} version {version}; {fix}")
    return meta
