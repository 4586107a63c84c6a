"""The node side of `--executor ray`: the bodies of the Ray tasks that run on a node.

A build task (`build_on_node`) and a measurement task (`measure_on_node`) each make the driver's
job machine-local (the model and corpus from this node's cache, its threads, calibrated peaks, env
block, and the node's fields on every record), run the unchanged quantbench worker process in a
temp dir, exactly as locally (runner._spawn: timeouts, crash records, RESPAWN after a build), and
hand back only what is small: a build's artefact path and time, or the variant's records. The
driver (`fleet.py`) submits these functions; a node imports this module by name to run them.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import tempfile
from pathlib import Path

from quantbench.backends import get_backend_class
from quantbench.core import envs, records
from quantbench.core.variant import Reference, Variant
from quantbench.measure import runner
from quantbench.measure.runner import RESPAWN, Ended
from quantbench.measure.worker import BUILD_ONLY_ENV

GPU_KIND = "accelerator_type:"  # Ray's own resource on GPU nodes; such a kind also asks for a GPU
KIND_PREFIXES = ("qb-kind:", GPU_KIND)


def node_kind_of(resources: dict) -> str:
    """Returns the kind a node's resources name (its first qb-kind: or accelerator_type: label), or ''."""
    return next((r for r in sorted(resources) if r.startswith(KIND_PREFIXES)), "")


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a measurement task hands back: the job as it ran on the node, its records (small, the
    only thing that travels), how the worker ended, and an engine crash's details."""
    job: Variant
    records: list[dict]
    ended: Ended
    crash: dict | None = None


def _this_node(kind: str) -> tuple[str, str]:
    """Returns (this Ray node's id, its kind: `kind`, else the first kind label it offers)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    if not kind:
        kind = next((node_kind_of(n["Resources"]) for n in ray.nodes() if n["NodeID"] == node_id), "")
    return node_id, kind


def _on_node(job: Variant, kind: str, here: Path, calibrate: bool = True) -> tuple[Variant, Measured | None]:
    """Returns the job made for this node, and what the task returns without running the worker
    (a model that differs from the driver's, a backend environment missing here) or None. The
    machine-local parts are made here: the model and corpus from this node's cache, its threads,
    its calibrated peaks and env block, and the node's fields on every record."""
    from quantbench.inputs.models import resolve

    node_id, kind = _this_node(kind)
    model = resolve(job.suite.model)
    fields = {"node_kind": kind, "ray_node_id": node_id, "host": socket.gethostname()}
    base = {**job.base, **fields, "env": records.environment()}
    if model.digest != job.model_digest:
        why = (f"{model.name} on {socket.gethostname()} differs from the driver's (digest "
               f"{model.digest[:12]} vs {job.model_digest[:12]}); give every node the same model")
        return job, Measured(job, [], Ended(1, why))
    data_path, tokens_path, tok_key = runner.inputs(job.suite, model, here)
    # threads = 0 means this node's physical cores, not the driver's
    threads = job.suite.thread_count() if job.suite.thread_list == (0,) else job.threads
    peaks = runner._peaks(job.device, threads) if calibrate else None  # a build predicts nothing
    job = dataclasses.replace(
        job, model_dir=model.dir, data=str(data_path), tokens_path=str(tokens_path), corpus_key=tok_key,
        threads=threads, reference=_node_reference(job.reference), partial=str(here / "records.jsonl"),
        base={**base, "peaks": peaks}, peaks=peaks)
    fmt = job.format
    if fmt.env and envs.python(fmt.env) is None:
        why = envs.missing_reason(fmt.name, fmt.env)
        return job, Measured(job, [{**base, "format": fmt.name, "device": job.device, "workload": str(w),
                                    "status": "skipped", "reason": why, "timestamp": records.now()}
                                   for w in job.workloads], Ended(0))
    return job, None


@dataclasses.dataclass(frozen=True)
class Built:
    """What a build task hands back (a few hundred bytes: the artefact stays in the node's cache):
    where it built, the artefact's path and build time, or the records of a build that failed or
    was skipped (then the measurement does not run)."""
    node_id: str
    artifact: str = ""
    build_s: float = 0.0
    records: tuple = ()
    reason: str = ""
    started_at: str = ""
    ended_at: str = ""

    def fields(self) -> dict:
        """Returns the record fields that say where and when the build ran."""
        return {"build_node_id": self.node_id, "build_started_at": self.started_at,
                "build_ended_at": self.ended_at}


def build_on_node(job: Variant, kind: str) -> Built:
    """Returns the variant's artefact built (or found) in this node's cache by the worker process
    in build-only mode (a build task's body; it measures nothing)."""
    here = Path(tempfile.mkdtemp(prefix="quantbench-ray-build-"))
    try:
        job, early = _on_node(job, kind, here, calibrate=False)
        node_id, _ = _this_node(kind)
        if early:
            return Built(node_id, records=tuple(early.records), reason=early.ended.reason)
        started = records.instant()
        if found := _cached_artifact(job):  # a cache hit needs no worker (~7 s of imports saved)
            return Built(node_id, found, 0.0, started_at=started, ended_at=records.instant())
        job_path = here / "job.json"
        job_path.write_text(job.to_json())
        ended = runner._spawn(job_path, job, {BUILD_ONLY_ENV: "1"})
        span = {"started_at": started, "ended_at": records.instant()}
        partial = Path(job.partial)
        got = tuple(records.read(partial, quiet=True)) if partial.exists() else ()
        side = Path(job.partial + ".build.json")
        done = json.loads(side.read_text()) if side.exists() else {}
        # a crashed build leaves it to the measurement, which builds again and records the crash
        return Built(node_id, done.get("artifact") or "", float(done.get("build_s") or 0.0), got, ended.reason,
                     **span)
    finally:
        shutil.rmtree(here, ignore_errors=True)


def _cached_artifact(job: Variant) -> str:
    """Returns the job's artifact when this node's cache already holds it whole, asked in this
    process; '' when it does not, or when only the worker can tell (a backend environment of its
    own, a backend that cannot import here: the worker then reports why)."""
    if job.format.env:
        return ""
    try:
        return get_backend_class(job.format.backend)(job).cached_artifact()
    except Exception:  # noqa: BLE001 - any failure here is the worker's to report
        return ""


def measure_on_node(job: Variant, kind: str, built: Built | None = None) -> Measured:
    """Returns the variant measured on this node by the unchanged worker process (the Ray task's
    body), after its build task (`built`, which Ray resolves before it schedules this)."""
    node_id, _ = _this_node(kind)  # in the temp dir's name: which node measures what, from outside
    here = Path(tempfile.mkdtemp(prefix=f"quantbench-ray-{node_id[:12]}-"))
    try:
        job, early = _on_node(job, kind, here)
        if early:
            return early
        if built and built.records:  # the build failed or was skipped: so is each workload, as it said
            said = {**built.records[0], **built.fields()}
            return Measured(job, [{**said, "format": job.format.name, "threads": job.threads, "workload": str(w),
                                   "depth": w.depth, "timestamp": records.now()} for w in job.workloads],
                            Ended(0))
        if built:
            job = dataclasses.replace(job, base={**job.base, **built.fields()})
        if built and built.build_s and Path(built.artifact).exists():
            # built here (or on a shared cache): the record carries its build time; without the
            # artefact here, the worker builds it itself and measures in a fresh process
            Path(job.partial + ".build.json").write_text(json.dumps({"build_s": built.build_s}))
        job_path = here / "job.json"
        job_path.write_text(job.to_json())
        ended = runner._spawn(job_path, job)
        if ended.rc == RESPAWN:  # it built the artifact; measure in a fresh process
            ended = runner._spawn(job_path, job)
        partial = Path(job.partial)
        got = records.read(partial, quiet=True) if partial.exists() else []
        crash = runner._crash_details(job, ended) if ended.engine_fault else None
        return Measured(job, got, ended, crash)
    finally:
        shutil.rmtree(here, ignore_errors=True)


def _node_reference(ref: Reference) -> Reference:
    """Returns the job's reference as this node sees it: the same content-keyed name in this
    node's cache; read where the file is missing here, no KLD and why."""
    if not ref.path:
        return ref
    from quantbench.core import cache

    path = cache.entry("reference", Path(ref.path).name)
    if ref.role == "read" and not cache.valid_npy(path):
        return Reference(ref.format, why=f"the {ref.format} reference log-probs are not in this node's "
                                         "cache (another node wrote them); share QUANTBENCH_CACHE across "
                                         "nodes for KLD on every node")
    return dataclasses.replace(ref, path=str(path))
