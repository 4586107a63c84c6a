"""`quantbench run --executor ray`: the suite's variants as Ray tasks, one per variant, on a fleet.

Which library does what. Ray places each task on a node whose resources match (a node kind, one
`quantbench-slot`), runs it, and hands its small result back. Inside the task the quantbench worker
process runs exactly as it does locally (runner._spawn: timeouts, crash records, RESPAWN after a
build). The driver owns the results file: it collects finished tasks with ray.wait and appends each
variant's records as they arrive. Models, quantized artefacts, GGUF files and reference log-probs
stay on storage, in each node's quantbench cache (QUANTBENCH_CACHE: per node, or shared over NFS),
never in Ray's object store: only job descriptions go out and records come back.

Measurement hygiene: every measuring node offers one `quantbench-slot` and every task asks for it,
so a host measures one variant at a time; the worker's threads are the suite's, set explicitly
(Ray sets OMP_NUM_THREADS to a task's CPU count); each record names its host, node kind and Ray
node id, and its measurement's started_at / ended_at.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from quantbench.core import envs, records
from quantbench.core.errors import UserError
from quantbench.core.formats import REFERENCE_ORDER, get_format
from quantbench.core.variant import Reference, Variant
from quantbench.measure import runner
from quantbench.measure.runner import RESPAWN, Ended, Output, _Run
from quantbench.measure.worker import BUILD_ONLY_ENV

SLOT = "quantbench-slot"  # one per measuring node: a host measures one variant at a time
GPU_KIND = "accelerator_type:"  # Ray's own resource on GPU nodes; such a kind also asks for a GPU
KIND_PREFIXES = ("qb-kind:", GPU_KIND)
KIND_ASK = 0.001  # a kind is asked for as a label: the slot, not the kind's count, serializes
# A build asks for this share of its node's slot: up to 1/BUILD_SLOT builds overlap on a host, and
# no measurement (which needs the whole slot) starts there while one runs, nor a build during one.
# A separate build resource could not keep a build off a measuring host; a slot share does.
BUILD_SLOT = 0.25
MAX_RETRIES = 1  # Ray-level retry, for a lost node only: a worker's own crash is already a record
# Ray's memory monitor kills a task's process when its node runs low, and by default retries such a
# task without limit (and outside max_retries). A variant's footprint is what is measured: the same
# variant would be killed again, so it fails at once, as a record (set in the driver before ray.init:
# the owner of a task decides its retries).
OOM_RETRIES = 0
POLL_S = 5.0  # how often the driver looks for tasks whose kind lost its last node
OBJECT_STORE_BYTES = 100 * 2**20  # a local cluster's store: records are all that travel
INSTALL = "pip install 'quantbench[fleet]'"
CONNECT_TIMEOUT_S = 5.0


def _ray():
    """Returns the ray module, or raises the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed; install it with `{INSTALL}` "
                        "(or run without --executor ray)") from None
    return ray


def _check_reachable(address: str) -> None:
    """Raises UserError when a host:port cluster address does not accept a TCP connection (Ray's
    own connect retries for a minute before it fails)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    parsed = urlparse(f"//{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise UserError(f"--ray-address '{address}' is not HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or "
                        "ray://HOST:PORT; pass the address `ray start --head` printed")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); "
                        "start one with `ray start --head --port=PORT` or pass the right address") from None


def connect(address: str | None):
    """Returns ray, connected: to `address`, to $RAY_ADDRESS, or else to a new one-node local
    cluster that offers one quantbench-slot. Raises UserError in one line when it cannot."""
    ray = _ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_task_oom_retries", str(OOM_RETRIES))  # a deliberate setting wins
    if address:
        _check_reachable(address)
        kw = {"address": address}
    else:
        kw = {"resources": {SLOT: 1}, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False}
    t0 = time.perf_counter()
    try:
        ray.init(**kw, logging_level="WARNING", log_to_driver=True)
        print(f"[quantbench] ray.init took {time.perf_counter() - t0:.1f} s "
              f"({'joined ' + address if address else 'a new one-node local cluster'})", flush=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {address or 'a new local cluster'}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check the address "
                        "and that the cluster runs the same Ray and Python versions") from None
    return ray


def check_cluster(nodes: list[dict], kinds: tuple[str, ...]) -> None:
    """Raises UserError, before anything runs, when no live node offers a quantbench-slot or a
    node kind the suite asks for is offered by no slotted node. `nodes`: ray.nodes()."""
    slotted = [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get(SLOT)]
    if not slotted:
        raise UserError(f"no node of the Ray cluster offers a '{SLOT}' resource, so none may measure; "
                        "start each measuring node with `ray start --address HEAD:PORT --resources "
                        f"'{{\"{SLOT}\": 1, \"qb-kind:NAME\": 1}}'`")
    offered = sorted({r for n in slotted for r in n["Resources"] if r.startswith(KIND_PREFIXES)})
    for kind in kinds:
        if not any(kind in n["Resources"] for n in slotted):
            raise UserError(f"node kind '{kind}' is offered by no node with a '{SLOT}'; kinds offered: "
                            f"{', '.join(offered) or 'none'}; fix node_kinds or add such a node")


def node_kind_of(resources: dict) -> str:
    """Returns the kind a node's resources name (its first qb-kind: or accelerator_type: label), or ''."""
    return next((r for r in sorted(resources) if r.startswith(KIND_PREFIXES)), "")


def task_options(kind: str, share: float = 1) -> dict:
    """Returns the Ray task options of a measurement on `kind` ('' = any node with a slot), or of a
    build with `share` = BUILD_SLOT."""
    resources = {SLOT: share}
    if kind:
        resources[kind] = KIND_ASK
    # num_cpus=0: the slot is the host's whole CPU; the worker runs the suite's threads itself.
    return {"num_cpus": 0, "num_gpus": share if kind.startswith(GPU_KIND) else 0, "resources": resources,
            "max_retries": MAX_RETRIES, "retry_exceptions": False}


def overlaps(recs: list[dict]) -> list[tuple[dict, dict]]:
    """Returns the pairs of ok records whose measurements overlapped on one Ray node, from their
    started_at / ended_at alone (empty when the slot kept every node to one at a time)."""
    out = []
    by_node: dict[str, list[dict]] = {}
    for r in recs:
        if r.get("status") == "ok" and r.get("started_at") and r.get("ended_at"):
            by_node.setdefault(r.get("ray_node_id") or r.get("host", ""), []).append(r)
    for rs in by_node.values():
        rs.sort(key=lambda r: r["started_at"])
        for i, a in enumerate(rs):
            out += [(a, b) for b in rs[i + 1:] if b["started_at"] < a["ended_at"]]
    return out


def build_overlaps(recs: list[dict]) -> list[tuple[str, dict]]:
    """Returns (build node, ok record) pairs where a build task ran on the node while that record
    was measured there, from the records' build_* and started_at / ended_at fields alone."""
    spans = {(r["build_node_id"], r["build_started_at"], r["build_ended_at"]) for r in recs
             if r.get("build_node_id") and r.get("build_started_at") and r.get("build_ended_at")}
    return [(node, r) for node, b0, b1 in sorted(spans) for r in recs
            if r.get("status") == "ok" and r.get("ray_node_id") == node and r.get("started_at")
            and r["started_at"] < b1 and b0 < r.get("ended_at", "")]


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
        job_path = here / "job.json"
        job_path.write_text(job.to_json())
        started = records.instant()
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


@dataclasses.dataclass(frozen=True)
class Task:
    """One variant submitted to one node kind ('' = any), and the record fields its failure carries."""
    job: Variant
    kind: str
    rec_base: dict


def _tasks(r: _Run) -> tuple[list[Task], list[Task]]:
    """Returns (reference tasks, the rest): every variant of the model on the kinds of the suite's
    placement. References go first: the variants after them read their log-probs."""
    s = r.suite
    kinds = s.node_kinds or ("",)
    anywhere = {k[1:] for k in r.done}  # a task for any node: done on whichever node ran it
    first, rest, n = [], [], 0
    for device, fmt_name in runner.plan(s):
        fmt = get_format(fmt_name)
        todo_all = [w for w in r.workloads if not (fmt.compiled and w.batch > 1)]
        rec_base = {**r.base, "format": fmt_name, "device": device}
        if device.split(":")[0] not in fmt.devices:
            r.out.append([{**rec_base, "workload": str(w), "status": "skipped", "timestamp": records.now(),
                           "reason": f"{fmt_name} does not run on {device}"} for w in todo_all])
            continue
        ref_fmt = next((f for d, f in runner.plan(s) if d == device and f in REFERENCE_ORDER), None)
        sweep = len(s.thread_list) > 1
        for threads in s.thread_list:
            todo = [w for w in todo_all if not sweep or w.threads == threads]
            if not todo:
                continue
            job = r.variant(device, fmt_name, todo, ref_fmt, threads)
            if ref_fmt and ref_fmt != fmt_name:  # the node looks for the reference, not the driver
                job = dataclasses.replace(job, reference=Reference(
                    ref_fmt, str(runner.reference_path(r, ref_fmt, device)), "read"))
            on = kinds if s.placement == "each" else (kinds[n % len(kinds)],)
            n += 1  # dealt before --resume drops what is done, so a resumed spread deals alike
            for kind in on:
                ident = (r.model.name, fmt_name, device)
                left = tuple(w for w in todo if ((kind, *ident, str(w)) if kind else (*ident, str(w)))
                             not in (r.done if kind else anywhere))
                if not left:
                    print(f"[{fmt_name}/{device}{'/' + kind if kind else ''}] already in {r.out.path}, "
                          "skipped (--resume)", flush=True)
                    continue
                kind_base = {**rec_base, "node_kind": kind} if kind else rec_base
                (first if fmt_name == ref_fmt else rest).append(
                    Task(dataclasses.replace(job, workloads=left), kind, kind_base))
    return first, rest


def done_key(rec: dict) -> tuple:
    """Returns what --resume counts as done on a fleet: (node kind, model, format, device,
    workload), since `each` measures one variant once per kind."""
    return (rec.get("node_kind") or "", *records.key(rec))


def builds(fmt_name: str) -> bool:
    """Returns whether the format's backend builds an artefact (overrides Backend.build), so that
    its variants wait on a build task; a backend that cannot be imported here builds on the node."""
    from quantbench.backends import Backend, get_backend_class

    try:
        return get_backend_class(get_format(fmt_name).backend).build is not Backend.build
    except ImportError:
        return True


def run_variants(r: _Run, after_variant) -> None:
    """Runs one model's variants as Ray tasks (references first), each after its build task,
    appending each variant's records to the results file as its task finishes (runner.run's
    `variants`). Every build goes out first: one per (kind, device, artefact), so builds overlap
    one another while the measurements wait for theirs."""
    import ray

    remote, build = ray.remote(measure_on_node), ray.remote(build_on_node)
    _nodes()  # what each node offers while it is alive, to name it in a record once it is lost
    first, rest = _tasks(r)
    built = {}
    for t in first + rest:
        key = (t.kind, t.job.device, t.job.format.base)
        if key not in built and builds(t.job.format.name):
            built[key] = build.options(**task_options(t.kind, BUILD_SLOT)).remote(t.job, t.kind)

    def submit(t: Task):
        dep = built.get((t.kind, t.job.device, t.job.format.base)) if not t.job.kernel_fallback else None
        return remote.options(**task_options(t.kind)).remote(t.job, t.kind, dep)

    try:
        for batch in (first, rest):
            pending = {submit(t): t for t in batch}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                    if not ready:  # a retry (or a task not yet placed) whose kind no live node offers
                        for ref, why in stranded(pending, _nodes(), SEEN).items():
                            ray.cancel(ref, force=True)
                            task = pending.pop(ref)
                            runner._collect(task.job, r.out, task.rec_base, why, got=[])
                            after_variant()
                        continue
                    task = pending.pop(ready[0])
                    for retry in _arrived(r, task, ready[0]):
                        pending[submit(retry)] = retry
                    after_variant()
            except KeyboardInterrupt:
                for ref, task in pending.items():
                    ray.cancel(ref, force=True)
                    runner._collect(task.job, r.out, task.rec_base, runner.INTERRUPTED, got=[])
                raise
    finally:
        for ref in built.values():  # a build whose measurements were all stranded
            ray.cancel(ref, force=True)


SEEN: dict[str, dict] = {}  # node id -> its resources when last seen alive (Ray empties a dead node's)


def _nodes() -> list[dict]:
    """Returns ray.nodes(), noting each live node's resources in SEEN."""
    import ray

    nodes = ray.nodes()
    SEEN.update({n["NodeID"]: n.get("Resources", {}) for n in nodes if n.get("Alive")})
    return nodes


def _lost(nodes: list[dict], kind: str, seen: dict) -> str:
    """Returns the dead slotted nodes of a kind ('' = any), named by id and address, for a record;
    `seen`: their resources while alive."""
    def res(n):
        return n.get("Resources") or seen.get(n["NodeID"], {})

    dead = [n for n in nodes if not n.get("Alive") and SLOT in res(n) and (not kind or kind in res(n))]
    return ", ".join(f"node {n['NodeID'][:12]} at {n.get('NodeManagerAddress', '?')}" for n in dead)


def stranded(pending: dict, nodes: list[dict], seen: dict) -> dict:
    """Returns {task ref: failure reason} for the pending tasks that no live node can run: their
    kind's last node died (mid-variant, or before it started), so Ray would wait for it forever.
    `pending`: ref -> Task; `nodes`: ray.nodes(); `seen`: node id -> resources while it was alive."""
    live = [n["Resources"] for n in nodes if n.get("Alive") and n.get("Resources", {}).get(SLOT)]
    out = {}
    for ref, task in pending.items():
        if any(not task.kind or task.kind in res for res in live):
            continue
        lost = _lost(nodes, task.kind, seen)
        out[ref] = (f"no live node of kind {task.kind or 'any'} is left to run it"
                    + (f" (lost: {lost}; a variant running there is retried once on another node of "
                       "its kind, and there was none)" if lost else ""))
    return out


def _arrived(r: _Run, task: Task, ref) -> list[Task]:
    """Writes a finished task's records (failed ones for what it never reported); returns the
    kernel-fallback twin to submit when its engine crashed, as the local runner retries it."""
    import ray

    try:
        got: Measured = ray.get(ref)
    except ray.exceptions.RayError as e:  # the node was lost (and its retry too), or Ray's OOM killer
        lost = _lost(_nodes(), task.kind, SEEN)
        why = f"Ray task failed: {str(e).splitlines()[0]}" + (f" (lost: {lost})" if lost else "")
        runner._collect(task.job, r.out, task.rec_base, why, got=[])
        return []
    fmt = task.job.format
    runner._collect(task.job, r.out, task.rec_base, got.ended.reason, got.crash, got=got.records)
    if not (got.ended.engine_fault and r.suite.kernel_fallback and not fmt.kernel_path
            and fmt.backend in runner.SAFER_PATH):
        return []
    twin = f"{fmt.name}{runner.PATH_SUFFIX}{runner.SAFER_PATH[fmt.backend]}"
    print(runner._fallback_line(task.job, got.ended, got.crash or {}, twin), flush=True)
    why = f"{fmt.name} {got.ended.reason} on {(got.crash or {}).get('kernel') or 'its default path'}"
    job = dataclasses.replace(task.job, format=get_format(twin), kernel_fallback=why)
    return [Task(job, task.kind, {**task.rec_base, "format": twin})]


def run(suite, out_path, address: str | None = None, resume: bool = False, after_variant=None) -> Path:
    """Runs the suite on a Ray cluster (runner.run with Ray tasks as its executor); returns out_path.
    Every check that can fail (Ray installed, cluster reachable, slots and kinds offered) runs first."""
    Output(Path(out_path), resume)  # an unwritable --out fails before Ray starts
    ray = connect(address)
    check_cluster(ray.nodes(), suite.node_kinds)
    # --resume (after a killed driver, whose tasks Ray ends with it): the local executor's check
    # of the file (same suite and model) and only the (kind, variant, workload)s not yet ok go out
    return runner.run(suite, out_path, resume=resume, after_variant=after_variant, variants=run_variants,
                      done_key=done_key)
