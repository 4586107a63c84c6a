"""The artifact cache: content-hashed entries, written atomically (temp dir, then rename)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Returns $QUANTBENCH_CACHE, or the platform user cache dir + /quantbench."""
    env = os.environ.get("QUANTBENCH_CACHE")
    if env:
        return Path(env)
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("quantbench"))
    except ImportError:
        return Path.home() / ".cache" / "quantbench"


def content_key(*parts) -> str:
    """Returns a 16-hex-digit hash of the parts (strings, numbers, lists, dicts, bytes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Returns the sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def valid_npy(path: str | os.PathLike, n_elements: int | None = None) -> bool:
    """Returns True when path is a whole .npy file (header readable, data all there), with
    n_elements elements when given. A damaged one is deleted so that it is rebuilt, and said so."""
    import numpy as np

    path = Path(path)
    if not path.exists():
        return False
    try:
        a = np.load(path, mmap_mode="r")
        ok = n_elements is None or a.size == n_elements
    except (ValueError, OSError, EOFError):
        ok = False
    if not ok:
        print(f"[quantbench] damaged cache entry {path} removed; it is rebuilt", flush=True)
        path.unlink(missing_ok=True)
    return ok


def save_npy(path: str | os.PathLike, array) -> None:
    """Writes a .npy file whole or not at all: through a temp name of this process's own, since two
    processes (two nodes of one host) may write the same entry at once, then renamed over it."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


MANIFEST = "quantbench-manifest.json"


def _write_manifest(d: Path) -> None:
    sizes = {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}
    (d / MANIFEST).write_text(json.dumps(sizes, sort_keys=True))


def verified(final: Path, quiet: bool = False) -> bool:
    """Returns True when a cache entry made by atomic_dir is whole: every file of its manifest is
    there at its size. A damaged entry (truncated or deleted file) is removed so it is rebuilt."""
    if not final.exists():
        return False
    try:
        sizes = json.loads((final / MANIFEST).read_text())
        ok = all((final / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok and not quiet:  # quiet: a look ahead (an ETA) leaves the entry to its builder
        print(f"[quantbench] damaged cache entry {final} (a file is missing or truncated) removed; "
              "it is rebuilt", flush=True)
        shutil.rmtree(final, ignore_errors=True)
    return ok


def entry(kind: str, key: str) -> Path:
    """Returns the path of cache entry `kind/key` (it may not exist yet)."""
    return cache_dir() / kind / key


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yields a temp dir beside `final`; on success renames it to `final` (kept if another won)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        _write_manifest(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
