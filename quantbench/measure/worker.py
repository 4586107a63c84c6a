"""One variant in its own process: build, load, measure each workload, append its records.

Run as `python -m quantbench.measure.worker JOB.json` by the runner; a crash, OOM kill or hang here
loses only this variant (the runner writes `failed` records for what is missing).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from quantbench import backends
from quantbench.backends import CONSOLE_FD_ENV, Context, Skip, get_backend_class
from quantbench.core import cache, envs, records
from quantbench.core.errors import MissingDependency, UserError
from quantbench.core.formats import Layout, compute_dtypes, get_format
from quantbench.core.suite import Suite, Workload
from quantbench.measure.timing import EnergyMeter, score_windows, time_decode, time_prefill


@dataclasses.dataclass(frozen=True)
class Reference:
    """Where the KLD reference log-probs of a variant live: `write` them (the reference format),
    `read` them, or none (`why` says why)."""
    format: str = ""
    path: str = ""
    role: str = ""  # write, read, or "" when there is no reference
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Job:
    """One variant for a worker process: what to build and measure, and where its inputs are.
    The runner writes it as JSON; the worker parses it once (Job.from_json)."""
    model_name: str
    model_dir: str  # HF directory every format is built from
    model_digest: str
    random_weights: bool  # shape:NAME models: quality workloads are skipped
    format: str
    device: str
    threads: int
    suite: Suite
    workloads: tuple[Workload, ...]
    data: str  # .npz with the ppl windows and the prompt ids
    tokens_path: str  # the whole tokenized corpus (.npy); calibration reads after the windows
    calib_start: int
    corpus_key: str
    reference: Reference
    partial: str  # JSONL the worker appends its records to
    base: dict  # fields every record of this variant carries
    peaks: dict | None  # calibrated peaks of the device (hardware.Peaks as a dict)
    kernel_fallback: str = ""  # why this variant runs on a safer path ('' when it was asked for)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["workloads"] = [str(w) for w in self.workloads]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        d["suite"] = Suite(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["suite"].items()})
        d["workloads"] = tuple(Workload.parse(w) for w in d["workloads"])
        d["reference"] = Reference(**d["reference"])
        return cls(**d)


def peak_rss_bytes() -> int:
    """Returns this process's peak resident set size: VmHWM from /proc, in bytes.

    Not ru_maxrss: Linux carries the parent's high-water mark across fork+exec into it, so
    every worker would report at least the runner's own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _device_peak(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    import os

    import torch

    out = {"peak_device_bytes": int(torch.cuda.max_memory_allocated()),
           "reserved_device_bytes": int(torch.cuda.max_memory_reserved())}
    try:  # NVML sees what torch's allocator does not (llama.cpp, CUDA context, cuBLAS workspaces)
        import pynvml

        pynvml.nvmlInit()
        index = int(device.split(":")[1]) if ":" in device else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory:
                out["nvml_process_bytes"] = int(p.usedGpuMemory)
    except Exception:  # NVML absent or unsupported in a container: torch's figures remain
        pass
    return out


def _predict(job: Job, shape, info: dict, kind: str, peaks: dict | None = None, **kw) -> dict:
    """Returns the predicted twins for a workload from the calibrated peaks, or from `peaks`
    (empty when no shape/peaks are known)."""
    peaks = peaks or job.peaks
    if shape is None or not peaks:
        return {}
    from quantbench.arith import formulas, hardware

    peaks = hardware.Peaks(**peaks)
    # A format with a per-tensor layout is priced from it alone (the embedding table's dtype too,
    # where the table fixes it); the others take what the backend reports it stored (bnb keeps
    # fp32 embeddings on CPU, a GGUF of a type without a layout has its own mix).
    fmt = get_format(job.format)
    keys = () if fmt.embed_layout else ("bits_unquantized",) if fmt.layout else ("bits_per_weight",
                                                                                  "bits_unquantized")
    fmt = dataclasses.replace(fmt, **{k: info[k] for k in keys if k in info})
    if fmt.layout and info.get("weights_layout"):  # the layout the kernel repacked the linears to
        fmt = dataclasses.replace(fmt, layout=Layout(*info["weights_layout"]))
    # The peak its kernels compute at (llama.cpp and bnb's CPU int8 path are not torch GEMMs).
    return formulas.predicted_fields(shape, fmt, peaks, kind, compute_dtypes=compute_dtypes(
        fmt, job.device), kv_bytes_per_elem=info.get("kv_bytes_per_elem", 2), **kw)


def _sol(rec: dict) -> None:
    """Adds measured / predicted ratios (speed-of-light fractions) where both are present, and
    `sol_suspect` + its reason: nothing outruns its roofline, so a fraction above 1 says the
    peaks read low; a calibration taken beside other work makes every fraction doubtful."""
    for m in ("prefill_tok_s", "decode_tok_s"):
        if rec.get(m) and rec.get(f"{m}_predicted"):
            rec[m.replace("_tok_s", "_sol_frac")] = rec[m] / rec[f"{m}_predicted"]
    fracs = {k: rec[k] for k in ("prefill_sol_frac", "decode_sol_frac", "decode_sol_frac_spec")
             if rec.get(k) is not None}
    if not fracs:
        return
    why = [f"{k} {v:.2f} > 1: " + ("faster than the datasheet allows: the devices-table row does "
                                   "not fit this GPU" if k.endswith("_spec") else
                                   "faster than the calibrated roofline, so the calibration reads "
                                   "low (taken beside other work?); rerun `quantbench devices "
                                   f"--calibrate --threads {rec.get('threads') or 0}` on a quiet "
                                   "machine")
           for k, v in fracs.items() if v > 1]
    if cal := (rec.get("peaks") or {}).get("suspect"):
        why.append(f"calibration suspect: {cal}")
    rec["sol_suspect"] = bool(why)
    rec["sol_suspect_reason"] = "; ".join(why)


def _reference(job: Job):
    """Returns the reference log-probs to compare against (memory-mapped), or None."""
    ref = job.reference
    if ref.role == "read" and ref.path and Path(ref.path).exists():
        return np.load(ref.path, mmap_mode="r")
    return None


def run_workload(job: Job, backend, w: Workload, data, shape, energy=None) -> dict:
    """Returns the measured fields of one workload."""
    s = job.suite
    prompt_src = [int(t) for t in data["prompt"]]
    if w.kind == "load":
        backend.prefill(prompt_src[: s.n_ctx])
        return {"kv_cache_bytes": backend.kv_cache_bytes(),
                **_predict(job, shape, backend.info, "load", n_ctx=s.n_ctx)}
    # depth: the first D prompt tokens are cached untimed, the timed prompt follows them
    fill, src = prompt_src[: w.depth], prompt_src[w.depth:]
    if w.kind == "tg":
        out = time_decode(backend, src[: s.gen_prompt_tokens], w.tokens, s.min_samples,
                          s.time_budget_s, w.batch, fill, energy=energy, ci_target=s.ci_target,
                          max_samples=s.max_samples)
        if w.batch > 1 or w.depth:
            out["kv_cache_bytes"] = backend.kv_cache_bytes()
        kw = {"n_prompt": s.gen_prompt_tokens, "n_gen": w.tokens, "batch": w.batch, "depth": w.depth}
        out.update(_predict(job, shape, backend.info, "tg", **kw))
        spec = job.base.get("peaks_spec")  # the datasheet's bandwidth too (GPUs in the table)
        if spec and (twin := _predict(job, shape, backend.info, "tg", spec, **kw)):
            out["decode_tok_s_predicted_spec"] = twin["decode_tok_s_predicted"]
            out["decode_sol_frac_spec"] = out["decode_tok_s"] / twin["decode_tok_s_predicted"]
        return out
    if w.kind == "ppl":
        ref = job.reference
        windows = [[int(t) for t in x] for x in data["windows"]]
        reference, write, why = _reference(job), None, ref.why
        if ref.role == "write":
            write = np.zeros((s.kld_tokens, _vocab(backend, windows)), dtype=np.float16)
        elif reference is not None and reference.shape[1] != (vocab := _vocab(backend, windows)):
            why = f"vocab {vocab} differs from the {ref.format} reference's {reference.shape[1]}: no KLD"
            reference = None
        out = score_windows(backend, windows, s.quality_budget_s, reference, s.kld_tokens, write)
        rows = out.pop("reference_rows")
        if write is not None:
            path = Path(ref.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, write[:rows])
            tmp.rename(path)
            out.update(kld_reference=job.format, kld_mean=0.0, kld_p99=0.0, top1_agree=1.0,
                       rms_dp=0.0, kld_tokens=rows)
        elif "kld_mean" in out:
            out["kld_reference"] = ref.format
        else:
            out["kld_reason"] = why or "no reference log-probs for this model and corpus"
        if "bos_first" in data:  # corpus.bos_first: the window cut this record scored
            out["bos_first"] = bool(data["bos_first"])
        return {**out, **_predict(job, shape, backend.info, "ppl", n_ctx=s.n_ctx)}
    # prefill
    out = time_prefill(backend, src[: w.tokens], s.min_samples, s.time_budget_s, fill, s.ci_target,
                       s.max_samples)
    out["kv_cache_bytes"] = backend.kv_cache_bytes()
    return {**out, **_predict(job, shape, backend.info, "pp", n_prompt=w.tokens, depth=w.depth)}


def _vocab(backend, windows) -> int:
    return int(backend.logits(windows[0][:2]).shape[-1])


# Import-time chatter from optional libraries (torchao's missing CUDA kernels on a CPU build,
# torch's pytree deprecation notes) repeats in every worker; real errors still get through.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_chatter() -> None:
    """Raises the optional libraries' import-time loggers to ERROR."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


RESPAWN = 75  # exit code: "artifact built, run me again to measure"
# Set (to 1) by a fleet's build task: the worker builds (or finds) the artifact, writes what it
# built to JOB.partial + ".build.json" and exits; a measurement task on the same node then loads it.
BUILD_ONLY_ENV = "QUANTBENCH_BUILD_ONLY"


@contextlib.contextmanager
def output_to(path: Path):
    """Sends this process's fds 1 and 2 to `path` for the block: quantizers' progress bars and C
    libraries' chatter (llama.cpp, GPTQModel's kernels) land in a log, not in the run's output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.environ[CONSOLE_FD_ENV] = str(saved[0])  # backends.say() still reaches the console
    try:
        # The fds, not sys.stdout/err: a logging handler made during the block keeps the stream it
        # saw, which must stay usable afterwards (sys.stdout still writes to fd 1, now the log).
        with path.open("ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ.pop(CONSOLE_FD_ENV, None)
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def build_log(tag: str) -> Path:
    """Returns a fresh log path under the cache for a variant's build and load output."""
    name = tag.strip("[]").replace("/", "-").replace(":", "")
    return cache.entry("logs", f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.log")


# What a quantizer's log says as it goes: GPTQModel's "Quantizing layer N of LAST" (0-based).
LAYER_LINE = re.compile(rb"Quantizing layer (\d+) of (\d+)")
PROGRESS_EVERY_S = 2.0


def progress_line(tag: str, done: int, total: int, elapsed_s: float) -> str:
    """Returns '[tag] quantizing: layer 10/30, 3:12 elapsed, ~6:24 left' (no ETA before a layer is done)."""
    def mmss(x: float) -> str:
        return f"{int(x // 60)}:{int(x % 60):02d}"

    eta = f", ~{mmss(elapsed_s / done * (total - done))} left" if done else ""
    return f"{tag} quantizing: layer {done}/{total}, {mmss(elapsed_s)} elapsed{eta}"


class LogProgress(threading.Thread):
    """Follows a build log for the quantizer's layer counter and keeps one progress line on the
    console: rewritten in place on a terminal, a new line per layer otherwise (CI logs)."""

    def __init__(self, log: Path, tag: str):
        super().__init__(daemon=True)
        self.log, self.tag, self.stop = log, tag, threading.Event()
        self.t0, self.last = time.perf_counter(), None

    def run(self) -> None:
        from quantbench.backends import say

        tty = os.isatty(int(os.environ.get(CONSOLE_FD_ENV, "1")))
        while not self.stop.wait(PROGRESS_EVERY_S):
            try:
                found = LAYER_LINE.findall(self.log.read_bytes()[-65536:])
            except OSError:
                continue
            if found:
                done, total = int(found[-1][0]), int(found[-1][1]) + 1
                line = progress_line(self.tag, done, total, time.perf_counter() - self.t0)
                if tty:
                    say("\r" + line + "\033[K", end="")
                elif done != self.last:
                    say(line)
                self.last = done
        if tty and self.last is not None:
            say("")


def logged(fn, log: Path, tag: str):
    """Returns fn() run with its output in `log`; on an exception prints the log's tail, re-raises.
    A quantizer's layer counter in the log becomes a progress line with an ETA on the console."""
    follow = LogProgress(log, tag)
    try:
        with output_to(log):
            follow.start()
            try:
                return fn()
            finally:
                follow.stop.set()
                follow.join()
    except Skip:  # expected (library absent, kernel missing): its reason says it all
        raise
    except Exception:
        tail = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        if tail:
            print(f"{tag} last lines of {log}:", *tail, sep="\n", file=sys.stderr, flush=True)
        raise


def die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this process when its parent (the runner) dies, so a killed runner
    leaves no orphan competing for the CPU with the next run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the runner's process-group kill still applies
        return
    if os.getppid() != parent_pid:  # the runner died before prctl took effect
        os._exit(1)


def main(job_path: str) -> int:
    quiet_import_chatter()
    backends.ISOLATED = True
    job = Job.from_json(Path(job_path).read_text())
    fmt = get_format(job.format)
    suite = job.suite
    data = np.load(job.data)
    base = {**job.base, "format": fmt.name, "device": job.device, "backend": fmt.backend,
            "threads": job.threads, "bits_per_weight": fmt.bits_per_weight, "host": socket.gethostname(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default").lower(),
            "kernel_path": fmt.kernel_path or "default", "kernel_fallback": job.kernel_fallback}
    if (omp := os.environ.get("OMP_NUM_THREADS", "")).isdigit():  # the runner sets it to threads
        base["omp_num_threads"] = int(omp)
    if env_name := os.environ.get(envs.ENV_VAR):  # under a backend environment: its own versions
        base.update(backend_env=env_name, env={**base.get("env", {}), **records.library_versions(),
                                               "python_executable": sys.executable})
    tag = f"[{fmt.name}/{job.device}]"

    def emit(workload: Workload, fields: dict, status="ok", reason=""):
        rec = {**base, **backend_info(), "workload": str(workload), "depth": workload.depth,
               "status": status, "reason": reason, "timestamp": records.now(), **fields}
        if status == "ok":
            rec.update(peak_rss_bytes=peak_rss_bytes(), **_device_peak(job.device))
            _sol(rec)
        records.append(job.partial, [rec])

    ctx = Context(job.model_name, job.model_dir, job.model_digest, fmt, job.device, job.threads,
                  suite, job.tokens_path, job.calib_start, suite.artifacts.get(fmt.base, ""),
                  job.corpus_key)
    backend = None

    def backend_info():
        return dict(backend.info) if backend is not None else {}

    try:
        backend = get_backend_class(fmt.backend)(ctx)
        log = build_log(tag)  # quantizers' progress bars and library banners go here
        logged(backend.build, log, tag)
        if backend.info.get("build_s"):
            print(f"{tag} built in {backend.info['build_s']:.1f} s (log: {log})", flush=True)
        built = Path(job.partial + ".build.json")
        if os.environ.get(BUILD_ONLY_ENV) == "1":
            built.write_text(json.dumps({k: backend.info.get(k) for k in ("artifact", "build_s")}, default=str))
            return 0
        if built.exists():  # built by this variant's previous process (or a fleet's build task)
            backend.info.update(json.loads(built.read_text()))
        elif backend.info.get("build_s"):
            # Quantizing grew this process; measure in a fresh one so peak RSS is the serving
            # footprint. It finds the artifact cached; hand it the build time.
            built.write_text(json.dumps({"build_s": backend.info["build_s"]}))
            return RESPAWN
        t0 = time.perf_counter()
        logged(backend.load, log, tag)
        load_s = time.perf_counter() - t0
        # The path now loaded, for the runner's crash record should the engine die measuring.
        Path(job.partial + ".kernel.json").write_text(json.dumps(
            {k: backend.info.get(k) for k in ("kernel", "kernel_detail")}, default=str))
        if log.exists() and log.stat().st_size == 0:
            log.unlink()
    except (Skip, MissingDependency) as e:  # expected absences; any other ImportError is a bug
        for w in job.workloads:
            emit(w, {}, "skipped", str(e).splitlines()[0] if str(e) else type(e).__name__)
        print(f"{tag} skipped: {e}", flush=True)
        return 0
    except Exception as e:  # a build or load that breaks fails this variant only
        if isinstance(e, UserError):
            print(f"{tag} failed: {e}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
        reason = str(e).splitlines()[0] if isinstance(e, UserError) else \
            f"{type(e).__name__}: {e}".splitlines()[0]
        for w in job.workloads:
            emit(w, {}, "failed", reason)
        return 0
    shape = _shape(job)
    energy = None
    if job.device.startswith("cuda"):  # energy per token, net of the card's idle draw
        energy = EnergyMeter(job.device)
        # sampled by the runner before any variant touched the card; after this worker's load the
        # clocks are still up and the "idle" draw reads high (on an H200: 125 W, against 88 W idle)
        energy.idle_w = job.base.get("gpu_idle_w") or energy.measure_idle()
    common = {"load_s": load_s, "weights_bytes": backend.weights_bytes()}
    base.update(common)
    for w in job.workloads:
        if w.kind == "ppl" and job.random_weights:
            emit(w, {}, "skipped", f"{job.model_name} has random weights: quality is meaningless")
            continue
        try:
            started = records.instant()
            fields = run_workload(job, backend, w, data, shape, energy)
            fields.update(started_at=started, ended_at=records.instant())
        except Skip as e:  # e.g. no batched decode in this backend
            emit(w, {}, "skipped", str(e))
            continue
        except Exception as e:  # one workload failing must not cost the others
            traceback.print_exc()
            emit(w, {}, "failed", f"{type(e).__name__}: {e}".splitlines()[0])
            continue
        emit(w, fields)
        print(f"{tag} {w}: " + _summary(fields), flush=True)
    if backend.probe_kernels():
        restamp(Path(job.partial), {k: backend.info.get(k) for k in ("kernel", "kernel_detail")})
    backend.close()
    return 0


def restamp(path: Path, fields: dict) -> None:
    """Rewrites the records of `path` with `fields` set (kernel fields named after the timed
    regions), atomically: the runner reads the file only after the worker has ended."""
    recs = records.read(path, quiet=True) if path.exists() else []
    tmp = path.with_name(path.name + ".restamp")
    tmp.unlink(missing_ok=True)
    records.append(tmp, [{**r, **fields} for r in recs])
    os.replace(tmp, path)


def _shape(job):
    try:
        from quantbench.arith.shapes import shape_from_config

        return shape_from_config(job.model_dir)
    except (ImportError, UserError, OSError, ValueError):
        return None


def _summary(f: dict) -> str:
    keys = ("prefill_tok_s", "decode_tok_s", "ppl", "kld_mean", "kv_cache_bytes")
    return " ".join(f"{k}={f[k]:.4g}" for k in keys if isinstance(f.get(k), (int, float)))


if __name__ == "__main__":
    die_with_parent(int(os.environ.get("QUANTBENCH_RUNNER_PID", os.getppid())))
    try:
        sys.exit(main(sys.argv[-1]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the runner says what happened
        sys.exit(130)
