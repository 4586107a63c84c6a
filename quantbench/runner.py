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

from quantbench import cache, corpus, records
from quantbench.errors import UserError
from quantbench.formats import get_format, with_kv_types
from quantbench.models import resolve
from quantbench.suite import Suite
from quantbench.worker import RESPAWN

# Most precise first: the KLD reference is the first of these the suite runs on a device.
REFERENCE_ORDER = ("fp32", "fp16", "gguf-f16", "bf16", "dummy")
VARIANT_TIMEOUT_S = int(os.environ.get("QUANTBENCH_VARIANT_TIMEOUT_S", 3 * 3600))


def workloads(suite: Suite) -> list[str]:
    """Returns the workload names of a suite: load, pp<N>..., tg<N>, tg<N>x<B>..., ppl<N_CTX>."""
    tg = f"tg{suite.gen_tokens}"
    return (["load"] + [f"pp{n}" for n in suite.prompt_lengths] + [tg]
            + [f"{tg}x{b}" for b in suite.decode_batches] + [f"ppl{suite.n_ctx}"])


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
        fmts = with_kv_types(suite.formats, suite.kv_types)
        ref = next((f for f in REFERENCE_ORDER if f in fmts), None)
        if ref:
            fmts.remove(ref)
            fmts.insert(0, ref)
        out += [(device, f) for f in fmts]
    return out


def _done(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    return {records.key(r) for r in records.read(path) if r["status"] == "ok"}


def _rotate(path: Path) -> None:
    """Moves an earlier results file to results/history/ so a new run never overwrites it."""
    if path.exists() and path.stat().st_size:
        hist = path.parent / "history"
        hist.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(path.stat().st_mtime))
        path.rename(hist / f"{path.stem}-{stamp}{path.suffix}")


def _peaks(device: str) -> dict | None:
    try:
        from quantbench import hardware
    except ImportError:
        return None
    return dataclasses.asdict(hardware.local_peaks(device))


def _spec(device: str, env: dict) -> dict | None:
    """Returns the spec-sheet peaks of the GPU a CUDA device names (None on CPU or unknown)."""
    if not device.startswith("cuda") or not env.get("gpu"):
        return None
    from quantbench import hardware

    spec = hardware.spec_for_gpu(env["gpu"])
    return dataclasses.asdict(spec) if spec else None


def _crash_reason(rc: int, timed_out: bool) -> str:
    if timed_out:
        return f"variant exceeded {VARIANT_TIMEOUT_S} s and was killed"
    if rc < 0:
        name = signal.Signals(-rc).name
        hint = " (likely out of memory)" if -rc == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {rc}"


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every variant of one run shares: the suite, model, inputs on disk, and record base."""
    suite: Suite
    model: object  # models.ModelSource
    out_path: Path
    done: set  # (model, format, device, workload) already ok (--resume)
    base: dict  # fields every record of the run carries
    workloads: list[str]
    tmp: Path  # job files and partial records, removed at the end
    data_path: Path  # windows + prompt token ids
    tokens_path: Path  # the whole tokenized corpus (calibration reads after the windows)
    tok_key: str
    peaks_by_device: dict


def run(suite: Suite, out_path: str | os.PathLike, resume: bool = False) -> Path:
    """Runs every variant of the suite, appending records to out_path; returns the path."""
    out_path = Path(out_path)
    check_devices(suite.devices)
    model = resolve(suite.model)
    ids = corpus.token_ids(model.dir, model.digest, suite.corpus)
    bos = corpus.bos_id(model.dir)
    windows = corpus.windows(ids, suite.n_ctx, suite.ppl_windows, bos)
    prompt = corpus.windows(ids, max(suite.prompt_lengths + (suite.n_ctx,)), 1, bos)[0]
    tok_key = cache.content_key("tokens", model.digest, ids.tobytes())  # a file: corpus may change
    tokens_path = cache.entry("tokens", f"ids-{tok_key}.npy")
    if not tokens_path.exists():
        tokens_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tokens_path, ids)
    if not resume:
        _rotate(out_path)
    env = records.environment()
    base = {"schema_version": records.SCHEMA_VERSION, "model": model.name,
            "run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}",
            "suite": suite.name, "suite_hash": suite.suite_hash, "corpus": suite.corpus,
            "model_note": model.note, "env": env}
    tmp = Path(tempfile.mkdtemp(prefix="quantbench-"))
    try:
        data_path = tmp / "data.npz"
        np.savez(data_path, windows=np.asarray(windows, dtype=np.int32),
                 prompt=np.asarray(prompt, dtype=np.int32))
        _run_variants(_Run(suite, model, out_path, _done(out_path) if resume else set(), base,
                           workloads(suite), tmp, data_path, tokens_path, tok_key,
                           {d: _peaks(d) for d in suite.devices}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_path


def _run_variants(r: _Run) -> None:
    references: dict[str, str] = {}
    for device, fmt_name in plan(r.suite):
        fmt = get_format(fmt_name)
        # A +compiled twin's static cache holds one sequence: its batched decode is its eager format's.
        todo = [w for w in r.workloads if (r.model.name, fmt_name, device, w) not in r.done
                and not (fmt.compiled and w.startswith("tg") and "x" in w)]
        if not todo:
            print(f"[{fmt_name}/{device}] already in {r.out_path}, skipped (--resume)", flush=True)
            if fmt_name in REFERENCE_ORDER and device not in references:
                references[device] = fmt_name
            continue
        rec_base = {**r.base, "format": fmt_name, "device": device}
        if device.split(":")[0] not in fmt.devices:
            records.append(r.out_path, [{**rec_base, "workload": w, "status": "skipped",
                                         "reason": f"{fmt_name} does not run on {device}"} for w in todo])
            continue
        ref_fmt = references.setdefault(device, fmt_name) if fmt_name in REFERENCE_ORDER else \
            references.get(device)
        job = _job(r, device, fmt_name, todo, ref_fmt)
        job_path = r.tmp / f"{fmt_name}-{device}.json"
        job_path.write_text(json.dumps(job))
        why = _spawn(job_path, job)
        if why == RESPAWN:  # it built the artifact; measure in a fresh process
            why = _spawn(job_path, job)
        _collect(job, r.out_path, rec_base, why)


def _job(r: _Run, device: str, fmt_name: str, todo: list[str], ref_fmt: str | None) -> dict:
    """Returns the worker's job: one variant, its workloads, and where its reference log-probs are."""
    s = r.suite
    ref_key = cache.content_key("ref", r.model.digest, r.tok_key, s.n_ctx, s.ppl_windows,
                                s.kld_tokens, ref_fmt, device)
    ref = {"format": ref_fmt or "", "path": str(cache.entry("reference", f"{ref_key}.npy")),
           "role": "write" if ref_fmt == fmt_name else "read"}
    if ref_fmt is None:
        ref = {"why": "no reference format (fp32, fp16, gguf-f16 or bf16) in the suite"}
    return {"model_name": r.model.name, "model_dir": r.model.dir, "model_digest": r.model.digest,
            "format": fmt_name, "device": device, "threads": s.thread_count(),
            "suite": dataclasses.asdict(s), "data": str(r.data_path),
            "tokens_path": str(r.tokens_path), "calib_start": s.n_ctx * s.ppl_windows,
            "corpus_key": r.tok_key, "workloads": todo, "reference": ref,
            "partial": str(r.tmp / f"{fmt_name}-{device}.jsonl"),
            "base": {**r.base, "peaks": r.peaks_by_device[device],
                     "peaks_spec": _spec(device, r.base["env"])},
            "random_weights": r.model.random_weights,
            "peaks": r.peaks_by_device[device]}


def _spawn(job_path: Path, job: dict) -> str | int:
    """Runs the worker on a job; returns '' on a clean exit, RESPAWN, or why it died."""
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.Popen([sys.executable, "-m", "quantbench.worker", str(job_path)], env=env)
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
    if rc == RESPAWN and not timed_out:
        return RESPAWN
    return "" if rc == 0 and not timed_out else _crash_reason(rc, timed_out)


def _collect(job: dict, out_path: Path, rec_base: dict, crash: str) -> None:
    """Appends the worker's records, plus `failed` ones for workloads it never reported."""
    partial = Path(job["partial"])
    got = records.read(partial) if partial.exists() else []
    have = {r["workload"] for r in got}
    reason = crash or "worker ended without a record"
    missing = [{**rec_base, "workload": w, "status": "failed", "reason": reason}
               for w in job["workloads"] if w not in have]
    records.append(out_path, got + missing)
    print(f"[{job['format']}/{job['device']}] done" + (f"; {reason}" if missing else ""), flush=True)
