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


def dir_digest(path: str | os.PathLike) -> str:
    """Returns a hash over a directory's weight/config files (names and contents)."""
    path = Path(path)
    parts = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".gguf", ".model", ".txt"):
            parts.append((str(p.relative_to(path)), file_digest(p)))
    return content_key(parts)


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
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
