"""Backend environments: a format may run its worker under another Python environment, when its
library's pins conflict with ours (optimum-intel wants transformers < 5.6, llmcompressor 5.15).

An environment is a venv in the cache, keyed by its requirements and the Python version, built
once by `quantbench env build NAME`. By default it is an overlay: a `.pth` line puts the main
environment's site-packages after its own, so only the conflicting packages are installed into it
(torch, numpy and quantbench's own requirements come from the main environment, no multi-GB
download) and the ones installed there shadow the main ones. The runner starts that venv's python
with quantbench's source on PYTHONPATH; records, progress, timeouts and resume are unchanged.
A format whose environment is not built becomes `skipped` with the command that builds it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from quantbench.core import cache
from quantbench.core.errors import UserError

ENV_VAR = "QUANTBENCH_BACKEND_ENV"  # set in a worker that runs under a backend environment
READY = ".quantbench-ready"  # written last: a venv without it is an interrupted build


@dataclass(frozen=True)
class BackendEnv:
    name: str
    requirements: tuple[str, ...]  # pip arguments, installed in one `pip install`
    why: str  # why it cannot live in the main environment; what installing it costs
    overlay: bool = True  # see the main environment's packages beneath its own
    # Installed after, with --no-deps: a package whose declared requirements would break the env
    # (optimum-intel requires torchvision, whose PyPI wheel is built for CUDA torch and fails to
    # register its ops on our CPU torch); `requirements` then lists what it really needs.
    no_deps: tuple[str, ...] = ()


# Exact pins, resolved against the main environment beneath (torch 2.13.0+cpu): `torch==2.13.0`
# is listed so that pip keeps that CPU build rather than pulling a CUDA torch for a dependent
# (torchvision 0.29 would bring torch 2.14 and 3 GB of CUDA wheels). Install costs: measured on
# this machine (2 cores), pip's download cache warm: docs/formats.md "Backend environments".
ENVS: dict[str, BackendEnv] = {e.name: e for e in [
    # optimum-intel 2.2 pins transformers < 5.6 (ours: 5.25) and huggingface-hub < 1.22 (so
    # datasets < 5, which needs a newer hub); nncf does the weight compression, openvino's CPU
    # plugin runs it. optimum-intel itself goes in --no-deps: see BackendEnv.no_deps.
    BackendEnv("openvino", ("openvino==2026.4.1", "openvino-tokenizers==2026.4.1.0", "nncf==3.4.0",
                            "optimum==2.3.0", "transformers==5.5.4", "huggingface-hub==1.21.0",
                            "datasets==4.8.4", "torch==2.13.0"),
               "optimum-intel 2.2 pins transformers < 5.6; installing it: 31 s, 423 MB",
               no_deps=("optimum-intel==2.2.0",)),
    # llmcompressor 0.14.0.1 pins transformers <= 5.17 and compressed-tensors == 0.19.0, and pulls
    # auto-round.
    BackendEnv("compressed-tensors", ("llmcompressor==0.14.0.1", "compressed-tensors==0.19.0",
                                      "transformers==5.17.0", "torch==2.13.0"),
               "llmcompressor 0.14 pins transformers 5.17; installing it: 39 s, 176 MB"),
    # auto-round 0.16.1 accepts our transformers (>= 4.38) but brings its own pins of accelerate /
    # datasets users may not want in the main environment, and auto-round-lib (its `ark` CPU
    # kernels, 14 MB wheel, needs torch >= 2.13): kept apart so the main environment stays lean.
    BackendEnv("auto-round", ("auto-round==0.16.1", "auto-round-lib==0.16.0", "torch==2.13.0"),
               "auto-round 0.16.1 with its ark CPU kernels (auto-round-lib 0.16.0); installing it: 39 s, 97 MB"),
]}


def get_env(name: str) -> BackendEnv:
    """Returns the environment `name`; unknown names raise naming the known ones."""
    if name not in ENVS:
        raise UserError(f"unknown backend environment '{name}'; known: {', '.join(ENVS) or 'none'}")
    return ENVS[name]


def env_dir(env: BackendEnv) -> Path:
    """Returns where env's venv lives: cache/envs/<name>-<hash of requirements, python, overlay>."""
    key = cache.content_key(env.requirements, env.no_deps, sys.version_info[:2], env.overlay,
                            sysconfig.get_paths()["purelib"] if env.overlay else "")
    return cache.entry("envs", f"{env.name}-{key}")


def python(name: str) -> Path | None:
    """Returns the interpreter of environment `name`, or None when it is not built (or half built)."""
    d = env_dir(get_env(name))
    exe = d / "bin" / "python"
    return exe if (d / READY).exists() and exe.exists() else None


def build_command(name: str) -> str:
    return f"quantbench env build {name}"


def missing_reason(fmt_name: str, name: str) -> str:
    """Returns the one line a skipped record carries when fmt's environment is not built."""
    env = get_env(name)
    return (f"{fmt_name} runs in the backend environment '{name}', not built here; build it once with "
            f"`{build_command(name)}` ({env.why})")


def build(name: str, log=print) -> Path:
    """Builds environment `name` (again, if a build was interrupted); returns its interpreter."""
    env = get_env(name)
    d = env_dir(env)
    if (d / READY).exists():
        log(f"[quantbench] environment '{name}' already built: {d}")
        return d / "bin" / "python"
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    log(f"[quantbench] building environment '{name}' in {d} ({env.why}) ...")
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    exe = d / "bin" / "python"
    if env.overlay:
        purelib = subprocess.run([str(exe), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        mine = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(purelib, "_quantbench_main_env.pth").write_text("\n".join(sorted(mine)) + "\n")
    if env.requirements:
        subprocess.run([str(exe), "-m", "pip", "install", *env.requirements], check=True)
    if env.no_deps:
        subprocess.run([str(exe), "-m", "pip", "install", "--no-deps", *env.no_deps], check=True)
    (d / READY).write_text("\n".join([*env.requirements, *env.no_deps]))
    return exe


def worker_command(name: str) -> tuple[list[str], dict[str, str]]:
    """Returns (interpreter argv prefix, extra environment) for a worker in environment `name`:
    its python, with this quantbench's source tree first on PYTHONPATH."""
    exe = python(name)
    if exe is None:
        raise UserError(missing_reason("this format", name))
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return [str(exe)], {"PYTHONPATH": path, ENV_VAR: name}
