import pytest

from quantbench.core import cache


def test_content_key_is_stable_and_sensitive():
    k = cache.content_key("gptq", {"bits": 4, "group": 64}, [1, 2, 3])
    assert k == cache.content_key("gptq", {"group": 64, "bits": 4}, [1, 2, 3])
    assert k != cache.content_key("gptq", {"bits": 4, "group": 32}, [1, 2, 3])
    assert k != cache.content_key("gptq", {"bits": 4, "group": 64}, [1, 2, 4])
    assert len(k) == 16


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path))
    assert cache.entry("gguf", "abc") == tmp_path / "gguf" / "abc"


def test_atomic_dir_commits_or_leaves_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with cache.atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("build died")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with cache.atomic_dir(final) as tmp:
        (tmp / "ok.bin").write_bytes(b"x")
    assert (final / "ok.bin").read_bytes() == b"x"


def test_file_digest(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert cache.file_digest(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_save_npy_writes_through_a_temp_of_its_own(tmp_path, monkeypatch):
    # Two nodes of one host wrote the KLD reference through one shared temp name, and one renamed
    # the other's file away (FileNotFoundError in CI); each writer now has its own.
    import os

    import numpy as np

    c = cache
    path = tmp_path / "ref" / "r.npy"
    other = path.with_suffix(f".{os.getpid() + 1}.tmp.npy")  # another process's write in flight
    other.parent.mkdir(parents=True)
    other.write_bytes(b"half")
    c.save_npy(path, np.arange(5, dtype=np.int32))
    assert c.valid_npy(path, 5) and np.load(path).tolist() == [0, 1, 2, 3, 4]
    assert other.read_bytes() == b"half"  # the other writer's temp file is left to it
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, other.name])
