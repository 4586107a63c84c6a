"""`quantbench run --executor ray`: the suite's variants as Ray tasks, one per variant, on a fleet.

Which library does what. Ray places each task on a node whose resources match (a node kind, one
`quantbench-slot`), runs it, and hands its small result back. Inside the task (fleet_node.py, the
node side) the quantbench worker process runs exactly as it does locally. This module is the
driver side: it checks the cluster, submits the tasks and owns the results file: it collects
finished tasks with ray.wait and appends each variant's records as they arrive. Models, quantized
artefacts, GGUF files and reference log-probs stay on storage, in each node's quantbench cache
(QUANTBENCH_CACHE: per node, or shared over NFS), never in Ray's object store: only job
descriptions go out and records come back.

Measurement hygiene: every measuring node offers one `quantbench-slot` and every task asks for it,
so a host measures one variant at a time; the worker's threads are the suite's, set explicitly
(Ray sets OMP_NUM_THREADS to a task's CPU count); each record names its host, node kind and Ray
node id, and its measurement's started_at / ended_at.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from quantbench.core import records
from quantbench.core.errors import UserError
from quantbench.core.formats import REFERENCE_ORDER, get_format
from quantbench.core.variant import Reference, Variant
from quantbench.measure import runner
from quantbench.measure.fleet_node import (  # noqa: F401 (the node side, all still importable from here)
    GPU_KIND,
    KIND_PREFIXES,
    Built,
    Measured,
    build_on_node,
    measure_on_node,
    node_kind_of,
)
from quantbench.measure.runner import Output, _Run

SLOT = "quantbench-slot"  # one per measuring node: a host measures one variant at a time
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
