"""scripts/devkit.py: the offline GPU kit's wheel slimming and its chunked pack/unpack round trip."""
import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("devkit", Path(__file__).parent.parent / "scripts" / "devkit.py")
devkit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(devkit)


def fake_wheel(where: Path, name: str, files: dict[str, bytes]) -> Path:
    """Writes a minimal valid wheel holding `files`; returns its path."""
    dist = f"{name}-1.0.dist-info"
    files = {**files,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}

    def digest(d: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()

    record = [f"{n},sha256={digest(d)},{len(d)}" for n, d in files.items()] + [f"{dist}/RECORD,,"]
    path = where / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def test_slim_llama_wheel_keeps_one_copy_of_each_library(tmp_path):
    lib = b"\x7fELF" + b"x" * 100
    w = fake_wheel(tmp_path, "llama_cpp_python", {
        "llama_cpp/__init__.py": b"",
        **{f"llama_cpp/lib/libggml-cuda.so{v}": lib for v in ("", ".0", ".0.25.3")},
        **{f"llama_cpp/lib/libllama.so{v}": lib for v in ("", ".0", ".0.5.0")},
        "lib/libllama-common.so": lib, "lib/cmake/ggml/ggml-config.cmake": b"x"})
    devkit.slim_llama_wheel(w)
    with zipfile.ZipFile(w) as z:
        names = set(z.namelist())
        record = z.read("llama_cpp_python-1.0.dist-info/RECORD").decode()
    assert {n for n in names if "/lib/" in n or n.startswith("lib/")} == {
        "llama_cpp/lib/libggml-cuda.so.0", "llama_cpp/lib/libllama.so", "llama_cpp/lib/libllama.so.0"}
    assert "libggml-cuda.so.0.25.3" not in record and "llama_cpp/lib/libllama.so," in record
    # pip installs it (RECORD matches what is inside)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", str(tmp_path / "site"), str(w)], check=True)
    assert (tmp_path / "site" / "llama_cpp" / "lib" / "libggml-cuda.so.0").read_bytes() == lib


def test_pack_unpack_round_trip_in_chunks(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i in range(3):
        fake_wheel(wheels, f"pkg{i}", {f"pkg{i}/__init__.py": f"VALUE = {i}\n".encode() * 200})
    kit = tmp_path / "kit"
    manifest = devkit.pack(wheels, kit, chunk_bytes=4000)
    assert len(manifest["chunks"]) >= 3 and all(c["bytes"] <= 4000 for c in manifest["chunks"])
    assert json.loads((kit / "manifest.json").read_text()) == manifest
    devkit.unpack(kit, tmp_path / "site")
    assert (tmp_path / "site" / "pkg2" / "__init__.py").read_text().startswith("VALUE = 2")
    # a missing chunk is named, and nothing is installed from a partial kit
    (kit / manifest["chunks"][1]["name"]).unlink()
    assert devkit.present(kit)[1] == [manifest["chunks"][1]["name"]]
    with pytest.raises(SystemExit, match="kit chunks missing or corrupt: kit.tar.001"):
        devkit.unpack(kit, tmp_path / "site2")
    assert not (tmp_path / "site2").exists()
