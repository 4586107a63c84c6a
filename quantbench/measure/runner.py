"""The run: suite x model x device x format, each variant in its own process, records appended.

The KLD reference format runs first on each device so every later variant can be compared
with its log-probs; everything else keeps suite order.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quantbench.arith import fit
from quantbench.backends import ENGINE_LOG_ENV
from quantbench.core import cache, envs, records
from quantbench.core.errors import UserError
from quantbench.core.formats import (
    KERNEL_PATHS,
    PATH_SUFFIX,
    REFERENCE_ORDER,
    SAFER_PATH,
    get_format,
    with_kernel_paths,
    with_kv_types,
)
from quantbench.core.suite import Suite, Workload
from quantbench.core.variant import Reference, Variant
from quantbench.inputs import corpus
from quantbench.inputs.models import resolve
from quantbench.measure.worker import RESPAWN

VARIANT_TIMEOUT_S = int(os.environ.get("QUANTBENCH_VARIANT_TIMEOUT_S", 3 * 3600))
# env fields that make two runs comparable: a resume continues only on the same machine
MACHINE_KEYS = ("cpu", "cpu_physical_cores", "ram_bytes", "gpu")


def check_devices(devices) -> None:
    """Raises UserError when a CUDA device is asked for and torch sees none."""
    if not any(d.startswith("cuda") for d in devices):
        return
    try:
        import torch
    except ImportError:
        raise UserError("device 'cuda' needs torch; run `nox -s gpu` or install a CUDA torch") from None
    if not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for but torch sees no GPU (torch "
                        f"{torch.__version__}); drop --device cuda or install a CUDA build of torch")


def plan(suite: Suite) -> list[tuple[str, str]]:
    """Returns (device, format) pairs in run order: each device's reference format first."""
    out = []
    for device in suite.devices:
        fmts = with_kernel_paths(with_kv_types(suite.formats, suite.kv_types), suite.kernel_paths)
        ref = next((f for f in REFERENCE_ORDER if f in fmts), None)
        if ref:
            fmts.remove(ref)
            fmts.insert(0, ref)
        out += [(device, f) for f in fmts]
    return out


class Output:
    """The results file of a run. A new run moves an earlier file to previous/ only when its first
    record is about to be written, so a run that fails before measuring anything loses nothing."""

    def __init__(self, path: Path, resume: bool):
        self.path, self.resume, self._rotated = path, resume, resume
        if path.is_dir():
            raise UserError(f"--out '{path}' is a directory; give a file path such as {path}/run.jsonl")
        parent = path.parent if str(path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create '{parent}' for the results: {e.strerror}; pick another --out") from None
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UserError(f"results path '{path}' is not writable; pick another --out or fix the "
                            "permissions (nothing was measured)")

    def append(self, recs: list[dict]) -> None:
        if not self._rotated:
            _rotate(self.path)
            self._rotated = True
        records.append(self.path, recs)


def _done(path: Path, suite: Suite, model_names: set[str], env: dict | None, key=records.key) -> set[tuple]:
    """Returns the key(record)s already ok in a results file being resumed; refuses, in one line,
    a file written by another suite, model or machine (its figures would be mixed with these).
    env None: no machine check (a fleet's records come from many machines)."""
    if not path.exists():
        return set()
    recs = records.read(path)
    for r in recs:
        theirs = {k: (r.get("env") or {}).get(k) for k in MACHINE_KEYS}
        mine = {k: (env or {}).get(k) for k in MACHINE_KEYS}
        if r.get("suite_hash") != suite.suite_hash:
            why = f"suite hash {r.get('suite_hash')}, this suite's is {suite.suite_hash}: settings differ"
        elif r["model"] not in model_names:
            why = f"model {r['model']}, not {' or '.join(sorted(model_names))}"
        elif env is not None and theirs != mine:
            why = "another machine: " + ", ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in MACHINE_KEYS
                                                  if theirs[k] != mine[k])
        else:
            continue
        raise UserError(f"--resume: {path} holds records of another run ({why}); rerun without "
                        "--resume to start a new file (the old one moves to previous/), or pass another --out")
    return {key(r) for r in recs if r["status"] == "ok"}


def _rotate(path: Path) -> None:
    """Moves an earlier results file to previous/ beside it so a new run never overwrites it
    (history/ is the per-machine run history of `quantbench track`)."""
    if path.exists() and path.stat().st_size:
        hist = path.parent / "previous"
        hist.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(path.stat().st_mtime))
        target = hist / f"{path.stem}-{stamp}{path.suffix}"
        n = 1
        while target.exists():  # two runs within a second: never overwrite history
            target = hist / f"{path.stem}-{stamp}-{n}{path.suffix}"
            n += 1
        path.rename(target)


def _peaks(device: str, threads: int) -> dict | None:
    """Returns the device's calibrated peaks at the variants' thread count (None without torch)."""
    try:
        import torch  # noqa: F401  (hardware calibrates with it)

        from quantbench.arith import hardware
    except ImportError:
        return None
    return dataclasses.asdict(hardware.local_peaks(device, threads=threads))


def _idle_draw(devices) -> float | None:
    """Returns the first CUDA device's idle board power (W), sampled before any variant runs, so
    that energy per token is net of what the card draws doing nothing (None: no CUDA, no NVML)."""
    cuda = [d for d in devices if d.startswith("cuda")]
    if not cuda:
        return None
    from quantbench.measure.timing import EnergyMeter

    return EnergyMeter(cuda[0]).measure_idle()


def _spec(device: str, env: dict) -> dict | None:
    """Returns the spec-sheet peaks of the GPU a CUDA device names (None on CPU or unknown)."""
    if not device.startswith("cuda") or not env.get("gpu"):
        return None
    from quantbench.arith import hardware

    spec = hardware.spec_for_gpu(env["gpu"])
    return dataclasses.asdict(spec) if spec else None


# Signals that say the engine's own code faulted (not a kill from outside, not the OOM killer).
ENGINE_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


@dataclasses.dataclass(frozen=True)
class Ended:
    """How a worker process ended: its exit code (negative: the signal) and why, '' when cleanly."""
    rc: int
    reason: str = ""

    @property
    def engine_fault(self) -> bool:
        """Returns whether the worker died by a fault signal: a crash inside an engine kernel."""
        return self.rc < 0 and -self.rc in ENGINE_FAULTS


def _crash_reason(rc: int, timed_out: bool, oom_kills: int = 0) -> str:
    if timed_out:
        return f"variant exceeded {VARIANT_TIMEOUT_S} s and was killed"
    if rc < 0:
        name = signal.Signals(-rc).name
        hint = ""
        if -rc == signal.SIGKILL:
            hint = (" by the kernel's out-of-memory killer" if oom_kills > 0 else
                    " (not by this cgroup's out-of-memory killer: by a user, a limit or the kernel)")
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {rc}"


def _oom_kills() -> int:
    """Returns this cgroup's OOM-kill count (cgroup v2 memory.events), or 0 when unknown."""
    try:
        for line in Path("/sys/fs/cgroup/memory.events").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every variant of one run shares: the suite, model, inputs on disk, and record base;
    `variant()` makes each variant from them, the one place a core.variant.Variant is assembled."""
    suite: Suite
    model: object  # models.ModelSource
    out: Output
    done: set  # (model, format, device, workload) already ok (--resume)
    base: dict  # fields every record of the run carries
    workloads: list[Workload]
    tmp: Path  # job files and partial records, removed at the end
    suite_hash: str  # the whole suite's (all its models), which every record carries
    data_path: Path  # windows + prompt token ids
    tokens_path: Path  # the whole tokenized corpus (calibration reads after the windows)
    tok_key: str
    peaks_by_device: dict  # (device, threads) -> calibrated peaks

    def variant(self, device: str, fmt_name: str, todo, ref_fmt: str | None, threads: int = 0,
                kernel_fallback: str = "") -> Variant:
        """Returns one variant of this run for the worker: its workloads `todo`, and where its
        reference log-probs (those of `ref_fmt` on this device) are read or written."""
        s = self.suite
        ref = Reference(ref_fmt, str(reference_path(self, ref_fmt, device)),
                        "write" if ref_fmt == fmt_name else "read")
        if ref_fmt is None:
            ref = Reference(why="no reference format (fp32, fp16, gguf-f16 or bf16) in the suite")
        elif ref.role == "read" and not cache.valid_npy(Path(ref.path)):
            ref = Reference(ref_fmt, why=f"the {ref_fmt} reference log-probs are missing or damaged; "
                                         f"rerun {ref_fmt} (without --resume) to rewrite them")
        peaks = self.peaks_by_device[device, threads]
        return Variant(self.model.name, self.model.dir, self.model.digest, get_format(fmt_name), device,
                       s.thread_count(threads), s, random_weights=self.model.random_weights,
                       workloads=tuple(todo), data=str(self.data_path), tokens_path=str(self.tokens_path),
                       calib_start=s.n_ctx * s.ppl_windows, corpus_key=self.tok_key, reference=ref,
                       partial=str(self.tmp / f"{fmt_name}-{device}-t{threads}.jsonl"),
                       base={**self.base, "peaks": peaks, "peaks_spec": _spec(device, self.base["env"])},
                       peaks=peaks, kernel_fallback=kernel_fallback)


def _check_cache_writable() -> None:
    """Raises UserError when the cache's logs/ cannot be written (full disk, read-only mount):
    every variant writes its build log there."""
    logs = cache.entry("logs", "")
    try:
        logs.mkdir(parents=True, exist_ok=True)
        probe = logs / f".probe-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the quantbench cache at '{logs}': {e.strerror}; free space "
                        "there or set QUANTBENCH_CACHE to a writable directory") from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the records written so far are kept."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run(suite: Suite, out_path: str | os.PathLike, resume: bool = False, after_variant=None,
        variants=None, done_key=None) -> Path:
    """Runs every variant of the suite (each of its models in turn), appending records to
    out_path; returns the path. after_variant(): called after each variant's records are written
    (the CLI re-renders its report there, so the first formats can be read while later ones build).
    variants(run, after_variant): the executor of one model's variants; default: this process's
    own, one worker subprocess at a time (fleet.py's runs them as Ray tasks, calibrating there).
    done_key(record): what --resume counts as done (another executor's key, with no machine check:
    its records come from many machines)."""
    out_path = Path(out_path)
    out = Output(out_path, resume)
    check_devices(suite.devices)
    _check_cache_writable()
    subs = suite.per_model()
    models = [resolve(s.model) for s in subs]
    env = records.environment()
    names = {m.name for m in models}
    if not resume:
        done = set()
    elif done_key:
        done = _done(out_path, suite, names, None, done_key)
    else:
        done = _done(out_path, suite, names, env)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for sub, model in zip(subs, models, strict=True):
            _run_model(sub, model, out, done, env, run_id, suite, after_variant, variants)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return out_path


def _run_model(suite: Suite, model, out: Output, done: set, env: dict, run_id: str, whole: Suite,
               after_variant=None, variants=None) -> None:
    """Runs every variant of one model of the suite."""
    base = {"schema_version": records.SCHEMA_VERSION, "model": model.name, "run_id": run_id,
            "suite": whole.name, "suite_hash": whole.suite_hash, "corpus": suite.corpus,
            "model_note": model.note, "env": env}
    local = variants is None  # another executor calibrates on the machines that measure
    peaks = {(d, t): _peaks(d, suite.thread_count(t)) if local else None
             for d in suite.devices for t in suite.thread_list}
    if local and (idle := _idle_draw(suite.devices)) is not None:
        base["gpu_idle_w"] = idle
    tmp = Path(tempfile.mkdtemp(prefix="quantbench-"))
    try:
        data_path, tokens_path, tok_key = inputs(suite, model, tmp)
        (variants or _run_variants)(_Run(suite, model, out, done, base, suite.workloads(), tmp, whole.suite_hash,
                                         data_path, tokens_path, tok_key, peaks), after_variant or (lambda: None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inputs(suite: Suite, model, tmp: Path) -> tuple[Path, Path, str]:
    """Returns (data .npz in tmp, tokenized corpus .npy in the cache, its content key): what a
    worker reads of the corpus, written for this machine (each node of a fleet writes its own)."""
    ids = corpus.token_ids(model.dir, model.digest, suite.corpus)
    # None unless the model adds BOS (llama.cpp's rule; a GGUF-born model: the file's flag)
    bos = corpus.bos_first(model.dir, model.spec if model.spec.endswith(".gguf") else "")
    windows = corpus.windows(ids, suite.n_ctx, suite.ppl_windows, bos)
    # the depth sweeps cache the first D prompt tokens untimed and time the ones after them
    longest = max(suite.prompt_lengths + (suite.n_ctx, suite.gen_prompt_tokens))
    longest += max(suite.depths, default=0)
    prompt = corpus.windows(ids, longest, 1, bos)[0]
    tok_key = cache.content_key("tokens", model.digest, ids.tobytes())  # a file: corpus may change
    tokens_path = cache.entry("tokens", f"ids-{tok_key}.npy")
    if not cache.valid_npy(tokens_path, len(ids)):
        cache.save_npy(tokens_path, ids)
    data_path = tmp / "data.npz"
    np.savez(data_path, windows=np.asarray(windows, dtype=np.int32),
             prompt=np.asarray(prompt, dtype=np.int32), bos_first=bos is not None)
    return data_path, tokens_path, tok_key


# Measuring one variant (process start, load, every timing, quality) on this project's 2-core
# machine: 26-51 s per variant of the 135M embedded model in the default suite, 128 s for fp16 (no
# fp16 GEMM on this CPU), about 10 s between variants; scaled by parameters and workloads elsewhere.
MEASURE_S_FIXED, MEASURE_S_PER_PARAM_WORKLOAD = 10.0, 6.2e-8


def measure_estimate_s(params: float, n_variants: int, n_workloads: int) -> float:
    """Returns about how long measuring n_variants variants of n_workloads workloads takes here."""
    return n_variants * (MEASURE_S_FIXED + MEASURE_S_PER_PARAM_WORKLOAD * params * n_workloads)


def _announce_builds(r: _Run) -> None:
    """Prints the run's expected length at the start, from the cache state and the suite: the
    slow builds ahead (GPTQ/AWQ calibration) and the measuring, at this project's reference speed,
    so a cold first run says where its time goes before it spends it."""
    from quantbench.backends import get_backend_class

    ahead, seen, build_s = [], set(), 0.0
    for device, fmt_name in plan(r.suite):
        fmt = get_format(fmt_name)
        if fmt.backend != "gptq" or (fmt.base, device) in seen:
            continue
        seen.add((fmt.base, device))
        variant = r.variant(device, fmt_name, (), None, r.suite.thread_list[0])
        try:
            est = get_backend_class(fmt.backend)(variant).build_estimate_s()
        except Exception:  # a missing library or a shape it cannot read: the variant will say why
            continue
        if est:
            build_s += est
            ahead.append(f"{fmt.base} {_about(est)}")
    try:
        from quantbench.arith.formulas import params_total
        from quantbench.arith.shapes import shape_from_config

        params = params_total(shape_from_config(r.model.dir, exact=False))
    except Exception:  # no readable shape: no estimate, the run goes on
        return
    todo = [v for v in plan(r.suite) if any((r.model.name, v[1], v[0], str(w)) not in r.done for w in r.workloads)]
    measure_s = measure_estimate_s(params, len(todo), len(r.workloads))
    builds = f"; to build first (cache miss): {', '.join(ahead)}" if ahead else ""
    print(f"[quantbench] this run: {_about(measure_s + build_s)} (measuring {len(todo)} variants "
          f"{_about(measure_s)}{builds}) at this project's reference speed (2 cores); builds show "
          "their layer progress and ETA", flush=True)


def _about(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def _run_variants(r: _Run, after_variant) -> None:
    _announce_builds(r)
    references: dict[str, str] = {}
    for device, fmt_name in plan(r.suite):
        fmt = get_format(fmt_name)
        # A +compiled twin's static cache holds one sequence: its batched decode is its eager format's.
        todo_all = [w for w in r.workloads if (r.model.name, fmt_name, device, str(w)) not in r.done
                    and not (fmt.compiled and w.batch > 1)]
        if not todo_all:
            print(f"[{fmt_name}/{device}] already in {r.out.path}, skipped (--resume)", flush=True)
            if fmt_name in REFERENCE_ORDER and device not in references:
                references[device] = fmt_name
            continue
        rec_base = {**r.base, "format": fmt_name, "device": device}
        if fmt.env and envs.python(fmt.env) is None:
            r.out.append([{**rec_base, "workload": str(w), "status": "skipped", "timestamp": records.now(),
                           "backend_env": fmt.env, "reason": envs.missing_reason(fmt_name, fmt.env)}
                          for w in todo_all])
            print(f"[{fmt_name}/{device}] skipped: {envs.missing_reason(fmt_name, fmt.env)}", flush=True)
            continue
        if device.split(":")[0] not in fmt.devices:
            r.out.append([{**rec_base, "workload": str(w), "status": "skipped", "timestamp": records.now(),
                           "reason": f"{fmt_name} does not run on {device}"} for w in todo_all])
            continue
        ref_fmt = references.setdefault(device, fmt_name) if fmt_name in REFERENCE_ORDER else \
            references.get(device)
        sweep = len(r.suite.thread_list) > 1  # workloads then carry their thread count (@t<N>)
        for threads in r.suite.thread_list:
            todo = [w for w in todo_all if not sweep or w.threads == threads]
            if not todo:
                continue
            job = r.variant(device, fmt_name, todo, ref_fmt, threads)
            tag = f"{fmt_name}-{device}" + (f"-t{threads}" if sweep else "")
            ended = _measure(r, job, tag, rec_base)
            if ended.engine_fault and r.suite.kernel_fallback and not fmt.kernel_path \
                    and fmt.backend in SAFER_PATH:
                twin = f"{fmt_name}{PATH_SUFFIX}{SAFER_PATH[fmt.backend]}"
                crash = _crash_details(job, ended)
                _collect(job, r.out, rec_base, ended.reason, crash, say=False)  # one line, below
                print(_fallback_line(job, ended, crash, twin), flush=True)
                if ref_fmt == fmt_name:  # the reference crashed: its twin writes the log-probs
                    ref_fmt = references[device] = twin
                why = f"{fmt_name} {ended.reason} on {crash.get('kernel') or 'its default path'}"
                job = r.variant(device, twin, todo, ref_fmt, threads, kernel_fallback=why)
                ended = _measure(r, job, tag.replace(fmt_name, twin, 1), {**rec_base, "format": twin})
                _collect(job, r.out, {**rec_base, "format": twin}, ended.reason)
            else:
                _collect(job, r.out, rec_base, ended.reason,
                         _crash_details(job, ended) if ended.engine_fault else None)
            after_variant()


INTERRUPTED = "run interrupted (Ctrl-C or SIGTERM) before this workload was measured"


def _measure(r: _Run, job: Variant, tag: str, rec_base: dict) -> Ended:
    """Returns how the worker ended after measuring `job` (a second process when the first built
    the artifact). Interrupted, it first keeps the records the worker wrote (a time-boxed run keeps
    the workloads it finished; --resume measures the rest)."""
    job_path = r.tmp / f"{tag}.json"
    job_path.write_text(job.to_json())
    try:
        ended = _spawn(job_path, job)
        if ended.rc == RESPAWN:  # it built the artifact; measure in a fresh process
            ended = _spawn(job_path, job)
    except KeyboardInterrupt:
        _collect(job, r.out, rec_base, INTERRUPTED)
        raise
    return ended


# Engine crashes known upstream: (backend, kernel path that crashed) -> the issue to read.
KNOWN_CRASHES = {
    ("gguf", "llama.cpp:AMX"): "ggml-org/llama.cpp#20824 (segfault in ggml_backend_amx_mul_mat)",
    ("gguf", "llama.cpp:CPU_REPACK"): "ggml-org/llama.cpp#20824 (repacked weights on AMX CPUs)",
}
ENGINE_LOG_TAIL = 8  # engine log lines kept in a crash record


def _crash_details(job: Variant, ended: Ended) -> dict:
    """Returns the crash record's fields: the signal, the kernel path the worker had loaded (its
    side file), the engine's last log lines, and the upstream issue where one is known."""
    fmt = job.format
    side = Path(job.partial + ".kernel.json")
    loaded = json.loads(side.read_text()) if side.exists() else {}
    log = Path(job.partial + ".engine.log")
    tail = log.read_text(errors="replace").splitlines()[-ENGINE_LOG_TAIL:] if log.exists() else []
    out = {"backend": fmt.backend, "crash_signal": signal.Signals(-ended.rc).name, "engine_log_tail": tail,
           "kernel": loaded.get("kernel", ""), "kernel_detail": loaded.get("kernel_detail") or {}}
    if known := KNOWN_CRASHES.get((fmt.backend, out["kernel"])):
        out["crash_upstream"] = known
    return out


def _fallback_line(job: Variant, ended: Ended, crash: dict, twin: str) -> str:
    """Returns the one console line that says an engine crashed and what runs instead."""
    path = KERNEL_PATHS[get_format(twin).kernel_path]
    where = f" in {crash['kernel']}" if crash.get("kernel") else ""
    known = f" (known upstream: {crash['crash_upstream']})" if crash.get("crash_upstream") else ""
    return (f"{job.tag} {ended.reason}{where}{known}; its records are kept as failed. "
            f"Retrying once as {twin}: {path.what}. Suite key kernel_fallback = false turns this off.")


def reference_path(r: _Run, ref_fmt: str | None, device: str) -> Path:
    """Returns where the reference format's log-probs for this model, corpus and device live in
    the cache (content-keyed: the same name on every machine)."""
    s = r.suite
    ref_key = cache.content_key("ref", corpus.WINDOWS_PROTOCOL, r.model.digest, r.tok_key, s.n_ctx,
                                s.ppl_windows, s.kld_tokens, ref_fmt, device)
    return cache.entry("reference", f"{ref_key}.npy")


def _spawn(job_path: Path, job: Variant, extra_env: dict | None = None) -> Ended:
    """Runs the worker on a job; returns how it ended (rc RESPAWN: run it again to measure)."""
    fmt = job.format
    path = KERNEL_PATHS.get(fmt.kernel_path)
    # A format with its own environment (envs.ENVS) runs its worker under that venv's python.
    exe, extra = envs.worker_command(fmt.env) if fmt.env else ([sys.executable], {})
    env = job.suite.omp_env({**os.environ, **extra, "TOKENIZERS_PARALLELISM": "false",
                             "OMP_NUM_THREADS": str(job.threads), "QUANTBENCH_RUNNER_PID": str(os.getpid()),
                             ENGINE_LOG_ENV: job.partial + ".engine.log", **dict(path.env if path else ()),
                             **(extra_env or {})})
    ooms = _oom_kills()
    proc = subprocess.Popen([*exe, "-m", "quantbench.measure.worker", str(job_path)], env=env)
    timed_out = False
    try:
        rc = proc.wait(timeout=VARIANT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc, timed_out = proc.wait(), True
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    if timed_out:
        return Ended(-signal.SIGKILL, _crash_reason(rc, timed_out))
    if rc in (0, RESPAWN):
        return Ended(rc)
    return Ended(rc, _crash_reason(rc, timed_out, _oom_kills() - ooms))


def _collect(job: Variant, out: Output, rec_base: dict, crash: str, details: dict | None = None,
             got: list[dict] | None = None, say: bool = True) -> None:
    """Appends the worker's records (`got`, else its partial file's), plus `failed` ones (with the
    crash's `details`) for workloads it never reported."""
    partial = Path(job.partial)
    if got is None:
        got = records.read(partial, quiet=True) if partial.exists() else []
    have = {r["workload"] for r in got}
    reason = crash or "worker ended without a record"
    missing = [{**rec_base, **(details or {}), "workload": str(w), "status": "failed", "reason": reason,
                "timestamp": records.now()} for w in job.workloads if str(w) not in have]
    fit.annotate(got)  # the step-time fit over this variant's decode sweep, on its records
    out.append(got + missing)
    if say:
        print(f"{job.tag} done" + (f"; {reason}" if missing else ""), flush=True)
