"""The fleet's build tasks and lost nodes, on a local Ray cluster of its own: a head with no CPUs,
two nodes of kind a and one of kind b (custom resources, one quantbench-slot each), a 100 MiB
object store; the `dummy` format on the `tiny` model, with a dummy build step (a cached artefact
that takes QUANTBENCH_DUMMY_BUILD_S to make). The tests run in file order: the later ones remove
nodes. They skip without Ray."""
import os
import tempfile
import time
from pathlib import Path

import pytest

from quantbench.core import records
from quantbench.core.suite import Suite
from quantbench.measure import fleet

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROOT = Path(__file__).resolve().parents[1]
A, B = "qb-kind:a", "qb-kind:b"
SMALL = Suite(name="fleet-faults", model="tiny", formats=("dummy",), prompt_lengths=(16,), gen_tokens=4,
              min_samples=2, time_budget_s=1.0, n_ctx=32, ppl_windows=1, quality_budget_s=10.0,
              kld_tokens=16, threads=(1, 2))
BUILD_S = f"1.{os.getpid()}"  # a fresh cache key per session, so the build really runs
ENV = {"QUANTBENCH_DUMMY_BUILD_S": BUILD_S, "QUANTBENCH_DUMMY_STEP_S": "0.05"}


def test_a_task_whose_kind_lost_its_last_node_is_stranded_and_names_the_node():
    task_a, task_b, anywhere = (fleet.Task(None, k, {}) for k in (A, B, ""))
    nodes = [{"NodeID": "a1" * 14, "Alive": True, "NodeManagerAddress": "10.0.0.1",
              "Resources": {"quantbench-slot": 1.0, A: 1.0}},
             {"NodeID": "b1" * 14, "Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {}}]
    seen = {"b1" * 14: {"quantbench-slot": 1.0, B: 1.0}}  # Ray empties a dead node's resources
    out = fleet.stranded({"ra": task_a, "rb": task_b, "r": anywhere}, nodes, seen)
    assert list(out) == ["rb"]
    assert out["rb"].startswith("no live node of kind qb-kind:b is left to run it (lost: node b1b1b1b1b1b1 "
                                "at 10.0.0.2;")


def test_a_build_asks_a_share_of_the_slot_so_builds_overlap_and_measurements_do_not():
    build, measure = fleet.task_options(A, fleet.BUILD_SLOT), fleet.task_options(A)
    assert build["resources"]["quantbench-slot"] == 0.25 and measure["resources"]["quantbench-slot"] == 1
    assert fleet.task_options("accelerator_type:L4", fleet.BUILD_SLOT)["num_gpus"] == 0.25
    assert build["max_retries"] == measure["max_retries"] == 1


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", *ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    os.environ.update(ENV)
    store = fleet.OBJECT_STORE_BYTES
    # a lost node is declared dead after ~2 s, not Ray's default ~30 s
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": store, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    nodes = {name: c.add_node(num_cpus=1, object_store_memory=store, resources={"quantbench-slot": 1, kind: 1})
             for name, kind in (("a1", A), ("a2", A), ("b1", B))}
    t0 = time.perf_counter()
    ray.init(address=c.address, logging_level="WARNING")
    print(f"ray.init took {time.perf_counter() - t0:.2f} s")
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_builds_run_as_tasks_before_their_measurements_never_beside_one(cluster, tiny, tmp_path):
    _, nodes = cluster
    out = tmp_path / "built.jsonl"
    fleet.run(SMALL.with_overrides(placement="each", node_kinds=(A, B)), out)
    recs = records.read(out)
    assert len(recs) == 14 and all(r["status"] == "ok" for r in recs)
    ids = {name: n.node_id for name, n in nodes.items()}
    for r in recs:  # one build per kind, on a node of that kind, finished before the measurement began
        assert r["build_node_id"] in ({ids["a1"], ids["a2"]} if r["node_kind"] == A else {ids["b1"]})
        assert r["build_ended_at"] <= r["started_at"]
    assert len({(r["node_kind"], r["build_node_id"]) for r in recs}) == 2
    assert max(r["build_s"] for r in recs) >= float(BUILD_S)  # built in a task, carried to the records
    assert fleet.build_overlaps(recs) == [] and fleet.overlaps(recs) == []


def _measuring(node_ids: dict, timeout_s: float = 300) -> str:
    """Returns the name of the node whose measurement task has written its first record."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, node_id in node_ids.items():
            found = Path(tempfile.gettempdir()).glob(f"quantbench-ray-{node_id[:12]}-*/records.jsonl")
            if any(p.stat().st_size for p in found):
                return name
        time.sleep(0.05)
    raise AssertionError(f"no measurement began on {sorted(node_ids)} in {timeout_s} s")


def _run_and_remove(cluster, suite, out: Path, candidates: tuple[str, ...]):
    """Runs the suite (here: the runner handles SIGTERM, which only the main thread may) while a
    thread removes the node that measures it mid-variant; returns that node's name."""
    import threading

    c, nodes = cluster
    removed = []

    def remove():
        victim = _measuring({n: nodes[n].node_id for n in candidates})
        c.remove_node(nodes[victim], allow_graceful=False)
        removed.append(victim)

    killer = threading.Thread(target=remove, daemon=True)
    killer.start()
    fleet.run(suite, out)
    killer.join(timeout=1)
    assert removed, "the run ended before a node could be removed"
    return removed[0]


def test_a_node_lost_mid_variant_is_retried_once_on_another_node_of_its_kind(cluster, tiny, tmp_path):
    _, nodes = cluster
    out = tmp_path / "retried.jsonl"
    suite = SMALL.with_overrides(node_kinds=(A,), threads=(1,))
    victim = _run_and_remove(cluster, suite, out, ("a1", "a2"))
    other = next(n for n in ("a1", "a2") if n != victim)
    recs = records.read(out)
    assert sorted(r["workload"] for r in recs) == sorted(str(w) for w in suite.workloads())  # each once
    assert all(r["status"] == "ok" and r["ray_node_id"] == nodes[other].node_id for r in recs)


def test_a_node_lost_with_no_other_of_its_kind_ends_as_failed_records_naming_it(cluster, tiny, tmp_path):
    _, nodes = cluster
    out = tmp_path / "lost.jsonl"
    suite = SMALL.with_overrides(node_kinds=(B,), threads=(1,))
    _run_and_remove(cluster, suite, out, ("b1",))
    recs = records.read(out)
    assert sorted(r["workload"] for r in recs) == sorted(str(w) for w in suite.workloads())  # nothing lost
    assert {r["status"] for r in recs} == {"failed"}
    reason = recs[0]["reason"]
    assert "no live node of kind qb-kind:b is left to run it" in reason, reason
    assert nodes["b1"].node_id[:12] in reason
