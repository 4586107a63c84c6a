"""One variant in its own process: build, load, measure each workload, append its records.

Run by the runner as `python -m quantbench.measure.worker VARIANT.json` (a core.variant.Variant);
a crash, OOM kill or hang here loses only this variant (the runner writes `failed` records for what
is missing). main() reads as the steps: build -> load -> measure, each writing its records.
"""
from __future__ import annotations

import contextlib
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
from quantbench.arith import sol
from quantbench.backends import CONSOLE_FD_ENV, Skip, get_backend_class
from quantbench.core import cache, envs, records
from quantbench.core.errors import MissingDependency, UserError
from quantbench.core.load import LoadWatch
from quantbench.core.suite import Workload
from quantbench.core.variant import Variant
from quantbench.measure.timing import EnergyMeter, score_windows, time_decode, time_prefill


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


def _reference(v: Variant):
    """Returns the reference log-probs to compare against (memory-mapped), or None."""
    ref = v.reference
    if ref.role == "read" and ref.path and Path(ref.path).exists():
        return np.load(ref.path, mmap_mode="r")
    return None


def run_workload(v: Variant, backend, w: Workload, data, shape, energy=None) -> dict:
    """Returns the measured fields of one workload, with their predicted twins (arith.sol)."""
    s = v.suite

    def predict(kind: str, peaks: dict | None = v.peaks, **kw) -> dict:
        return sol.predict(shape, v.format, v.device, peaks, kind, backend.info, **kw)

    prompt_src = [int(t) for t in data["prompt"]]
    if w.kind == "load":
        backend.prefill(prompt_src[: s.n_ctx])
        return {"kv_cache_bytes": backend.kv_cache_bytes(), **predict("load", n_ctx=s.n_ctx)}
    # depth: the first D prompt tokens are cached untimed, the timed prompt follows them
    fill, src = prompt_src[: w.depth], prompt_src[w.depth:]
    if w.kind == "tg":
        out = time_decode(backend, src[: s.gen_prompt_tokens], w.tokens, s.min_samples,
                          s.time_budget_s, w.batch, fill, energy=energy, ci_target=s.ci_target,
                          max_samples=s.max_samples)
        if w.batch > 1 or w.depth:
            out["kv_cache_bytes"] = backend.kv_cache_bytes()
        kw = {"n_prompt": s.gen_prompt_tokens, "n_gen": w.tokens, "batch": w.batch, "depth": w.depth}
        out.update(predict("tg", **kw))
        spec = v.base.get("peaks_spec")  # the datasheet's bandwidth too (GPUs in the table)
        if spec and (twin := predict("tg", spec, **kw)):
            out["decode_tok_s_predicted_spec"] = twin["decode_tok_s_predicted"]
        return out
    if w.kind == "ppl":
        ref = v.reference
        windows = [[int(t) for t in x] for x in data["windows"]]
        reference, write, why = _reference(v), None, ref.why
        if ref.role == "write":
            write = np.zeros((s.kld_tokens, _vocab(backend, windows)), dtype=np.float16)
        elif reference is not None and reference.shape[1] != (vocab := _vocab(backend, windows)):
            why = f"vocab {vocab} differs from the {ref.format} reference's {reference.shape[1]}: no KLD"
            reference = None
        out = score_windows(backend, windows, s.quality_budget_s, reference, s.kld_tokens, write)
        rows = out.pop("reference_rows")
        if write is not None:
            cache.save_npy(ref.path, write[:rows])
            out.update(kld_reference=v.format.name, kld_mean=0.0, kld_p99=0.0, top1_agree=1.0,
                       rms_dp=0.0, kld_tokens=rows)
        elif "kld_mean" in out:
            out["kld_reference"] = ref.format
        else:
            out["kld_reason"] = why or "no reference log-probs for this model and corpus"
        if "bos_first" in data:  # corpus.bos_first: the window cut this record scored
            out["bos_first"] = bool(data["bos_first"])
        return {**out, **predict("ppl", n_ctx=s.n_ctx)}
    # prefill
    out = time_prefill(backend, src[: w.tokens], s.min_samples, s.time_budget_s, fill, s.ci_target,
                       s.max_samples)
    out["kv_cache_bytes"] = backend.kv_cache_bytes()
    return {**out, **predict("pp", n_prompt=w.tokens, depth=w.depth)}


def _vocab(backend, windows) -> int:
    return int(backend.logits(windows[0][:2]).shape[-1])


# Import-time chatter from optional libraries (torchao's missing CUDA kernels on a CPU build,
# torch's pytree deprecation notes) repeats in every worker; real errors still get through.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_chatter() -> None:
    """Raises the optional libraries' import-time loggers to ERROR."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# Exit code: "artifact built, run me again to measure" (worker.build says why a fresh process).
RESPAWN = 75
# Set (to 1) by a fleet's build task: the worker builds (or finds) the artifact, writes what it
# built to VARIANT.partial + ".build.json" and exits; a measurement task on the same node then loads it.
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
    """Returns the exit code after building, loading and measuring the variant that `job_path`
    holds (Variant JSON) and writing its records: 0, or RESPAWN when it built the artifact."""
    quiet_import_chatter()
    backends.ISOLATED = True
    v = Variant.from_json(Path(job_path).read_text())
    out = Writer(v)
    log = build_log(v.tag)  # quantizers' progress bars and library banners go here
    try:
        backend = out.backend = get_backend_class(v.format.backend)(v)
        if build(v, backend, log):
            return RESPAWN
        if os.environ.get(BUILD_ONLY_ENV) == "1":
            return 0
        load_s = load(v, backend, log)
    except (Skip, MissingDependency) as e:  # expected absences; any other ImportError is a bug
        out.skip_all(e)
    except Exception as e:  # a build or load that breaks fails this variant only
        out.fail_all(e)
    else:
        measure(v, backend, load_s, out)
    return 0


def record_base(v: Variant) -> dict:
    """Returns the fields every record of the variant carries: the runner's, then what this
    process sees (host, OpenMP settings, a backend environment's own library versions)."""
    fmt = v.format
    base = {**v.base, "format": fmt.name, "device": v.device, "backend": fmt.backend,
            "threads": v.threads, "bits_per_weight": fmt.bits_per_weight, "host": socket.gethostname(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default").lower(),
            "kernel_path": fmt.kernel_path or "default", "kernel_fallback": v.kernel_fallback}
    if (omp := os.environ.get("OMP_NUM_THREADS", "")).isdigit():  # the runner sets it to threads
        base["omp_num_threads"] = int(omp)
    if env_name := os.environ.get(envs.ENV_VAR):  # under a backend environment: its own versions
        base.update(backend_env=env_name, env={**base.get("env", {}), **records.library_versions(),
                                               "python_executable": sys.executable})
    return base


class Writer:
    """Appends the variant's records to its partial file. Each carries the variant's base fields
    and the backend's info as it stands then (kernel, artifact, build_s; none before the backend
    exists); a measured one also its memory peaks and speed-of-light fields."""

    def __init__(self, v: Variant):
        self.v, self.base = v, record_base(v)
        self.backend = None  # set once made: its info goes into every record written after

    def write(self, w: Workload, fields: dict, status: str = "ok", reason: str = "") -> None:
        info = self.backend.info if self.backend is not None else {}
        rec = {**self.base, **info, "workload": str(w), "depth": w.depth, "status": status,
               "reason": reason, "timestamp": records.now(), **fields}
        if status == "ok":
            rec.update(peak_rss_bytes=peak_rss_bytes(), **_device_peak(self.v.device))
            rec.update(sol.sol_fields(rec))
        records.append(self.v.partial, [rec])

    def skip_all(self, e: Exception) -> None:
        """Writes every workload as skipped: the variant cannot run here (library, kernel absent)."""
        for w in self.v.workloads:
            self.write(w, {}, "skipped", str(e).splitlines()[0] if str(e) else type(e).__name__)
        print(f"{self.v.tag} skipped: {e}", flush=True)


    def fail_all(self, e: Exception) -> None:
        """Writes every workload as failed with the error's first line; a UserError is said in
        one line, anything else with its traceback."""
        if isinstance(e, UserError):
            print(f"{self.v.tag} failed: {e}", file=sys.stderr, flush=True)
            reason = str(e).splitlines()[0]
        else:
            traceback.print_exception(e)
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
        for w in self.v.workloads:
            self.write(w, {}, "failed", reason)


def build(v: Variant, backend, log: Path) -> bool:
    """Builds the variant's artifact (or finds it in the cache); returns True when this process
    should hand the measuring over to a fresh one (the worker then exits with RESPAWN)."""
    logged(backend.build, log, v.tag)
    if backend.info.get("build_s"):
        print(f"{v.tag} built in {backend.info['build_s']:.1f} s (log: {log})", flush=True)
    built = Path(v.partial + ".build.json")
    if os.environ.get(BUILD_ONLY_ENV) == "1":  # a fleet's build task: a measurement task loads it
        built.write_text(json.dumps({k: backend.info.get(k) for k in ("artifact", "build_s")}, default=str))
        return False
    if built.exists():  # built by this variant's previous process (or a fleet's build task)
        backend.info.update(json.loads(built.read_text()))
        return False
    if not backend.info.get("build_s"):
        return False
    # Quantizing grew this process, and peak RSS must be the serving footprint. VmHWM could be
    # reset (/proc/self/clear_refs), but what the quantizer freed is not all handed back to the
    # OS (glibc arenas, torch's caching allocator) and its libraries stay imported, so only a
    # fresh process measures cleanly. It finds the artifact cached; the side file hands it the
    # build time.
    built.write_text(json.dumps({"build_s": backend.info["build_s"]}))
    return True


def load(v: Variant, backend, log: Path) -> float:
    """Loads the variant; returns the seconds it took. Leaves the kernel path it loaded in a side
    file, for the runner's crash record should the engine die while measuring."""
    t0 = time.perf_counter()
    logged(backend.load, log, v.tag)
    load_s = time.perf_counter() - t0
    Path(v.partial + ".kernel.json").write_text(json.dumps(
        {k: backend.info.get(k) for k in ("kernel", "kernel_detail")}, default=str))
    if log.exists() and log.stat().st_size == 0:
        log.unlink()
    return load_s


def measure(v: Variant, backend, load_s: float, out: Writer) -> None:
    """Measures each workload and writes its record; one that fails or cannot run costs only
    itself. Then names the kernels where naming them would have disturbed the timing, and closes."""
    data = np.load(v.data)
    shape = _shape(v)
    energy = _energy_meter(v)
    out.base.update(load_s=load_s, weights_bytes=backend.weights_bytes())
    for w in v.workloads:
        if w.kind == "ppl" and v.random_weights:
            out.write(w, {}, "skipped", f"{v.model_name} has random weights: quality is meaningless")
            continue
        try:
            started, watch = records.instant(), LoadWatch()
            fields = run_workload(v, backend, w, data, shape, energy)
            fields.update(started_at=started, ended_at=records.instant(),
                          load_avg_1m=round(watch.load_avg_1m, 2),
                          others_busy_pct=round(watch.others_busy_pct(), 1))
        except Skip as e:  # e.g. no batched decode in this backend
            out.write(w, {}, "skipped", str(e))
            continue
        except Exception as e:  # one workload failing must not cost the others
            traceback.print_exc()
            out.write(w, {}, "failed", f"{type(e).__name__}: {e}".splitlines()[0])
            continue
        out.write(w, fields)
        print(f"{v.tag} {w}: " + _summary(fields), flush=True)
    if backend.probe_kernels():
        restamp(Path(v.partial), {k: backend.info.get(k) for k in ("kernel", "kernel_detail")})
    backend.close()


def _energy_meter(v: Variant) -> EnergyMeter | None:
    """Returns a meter of energy per token, net of the card's idle draw, on a CUDA device; else None."""
    if not v.device.startswith("cuda"):
        return None
    energy = EnergyMeter(v.device)
    # sampled by the runner before any variant touched the card; after this worker's load the
    # clocks are still up and the "idle" draw reads high (on an H200: 125 W, against 88 W idle)
    energy.idle_w = v.base.get("gpu_idle_w") or energy.measure_idle()
    return energy


def restamp(path: Path, fields: dict) -> None:
    """Rewrites the records of `path` with `fields` set (kernel fields named after the timed
    regions), atomically: the runner reads the file only after the worker has ended."""
    recs = records.read(path, quiet=True) if path.exists() else []
    tmp = path.with_name(path.name + ".restamp")
    tmp.unlink(missing_ok=True)
    records.append(tmp, [{**r, **fields} for r in recs])
    os.replace(tmp, path)


def _shape(v: Variant):
    try:
        from quantbench.arith.shapes import shape_from_config

        return shape_from_config(v.model_dir)
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
