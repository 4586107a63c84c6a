"""`quantbench run --executor ray` on a real local Ray cluster: a head with no CPUs and two nodes of
two fake kinds (custom resources), on 127.0.0.1; the `dummy` format on the `tiny` model.

The cluster tests skip without Ray (`pip install 'quantbench[fleet]'`; nox installs it); the
checks of the suite keys, the cluster check and the one-line errors run everywhere.
"""
import dataclasses
import os
import socket
import sys
from pathlib import Path

import pytest

from quantbench.cli import main
from quantbench.core import records
from quantbench.core.errors import UserError
from quantbench.core.suite import Suite
from quantbench.measure import fleet

# Every Ray process of these tests on the loopback address (Ray's own switch, read at its import)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("qb-kind:a", "qb-kind:b")
SMALL = Suite(name="fleet", model="tiny", formats=("dummy",), prompt_lengths=(16,), gen_tokens=4,
              min_samples=2, time_budget_s=1.0, n_ctx=32, ppl_windows=1, quality_budget_s=10.0,
              kld_tokens=16, threads=(1, 2))
STEP_S = "0.01"  # each dummy forward sleeps this long, so measurements last long enough to overlap
ADDRESS = ""  # the test cluster's, for a driver in another process


def _spans(recs):
    return [(r["ray_node_id"], r["started_at"], r["ended_at"]) for r in recs if r["status"] == "ok"]


# ---- everywhere: suite keys, the cluster check, the one-line errors ----

def test_placement_keys_are_validated_and_stay_out_of_the_suite_hash():
    assert Suite(placement="each", node_kinds=KINDS).suite_hash == Suite().suite_hash
    with pytest.raises(UserError, match="placement 'everywhere' unknown; use spread or each"):
        Suite(placement="everywhere")
    with pytest.raises(UserError, match="placement 'each' needs node_kinds"):
        Suite(placement="each")
    with pytest.raises(UserError, match=r"node_kinds \['amx'\] are not Ray resource labels"):
        Suite(node_kinds=("amx",))


def test_a_gpu_kind_asks_for_a_gpu_and_every_task_for_the_slot():
    gpu = fleet.task_options("accelerator_type:H100")
    assert gpu["num_gpus"] == 1 and gpu["resources"] == {"quantbench-slot": 1, "accelerator_type:H100": 0.001}
    cpu = fleet.task_options("qb-kind:cpu-amx")
    assert cpu["num_gpus"] == 0 and cpu["num_cpus"] == 0 and cpu["resources"]["quantbench-slot"] == 1
    assert fleet.task_options("")["resources"] == {"quantbench-slot": 1}
    assert cpu["max_retries"] == 1


def test_cluster_check_names_a_missing_slot_or_kind():
    node = {"Alive": True, "Resources": {"CPU": 4.0, "quantbench-slot": 1.0, "qb-kind:a": 1.0}}
    fleet.check_cluster([node], ("qb-kind:a",))
    with pytest.raises(UserError, match="offers a 'quantbench-slot' resource"):
        fleet.check_cluster([{"Alive": True, "Resources": {"CPU": 4.0}}], ())
    with pytest.raises(UserError, match="node kind 'qb-kind:b' is offered by no node.*kinds offered: qb-kind:a"):
        fleet.check_cluster([node], ("qb-kind:a", "qb-kind:b"))
    dead = {**node, "Alive": False}
    with pytest.raises(UserError, match="quantbench-slot"):
        fleet.check_cluster([dead], ())


def test_overlaps_are_found_from_the_records_alone():
    recs = [{"status": "ok", "ray_node_id": "n1", "started_at": "2026-01-01T00:00:00.000000Z",
             "ended_at": "2026-01-01T00:00:01.000000Z", "workload": "pp16"},
            {"status": "ok", "ray_node_id": "n1", "started_at": "2026-01-01T00:00:00.500000Z",
             "ended_at": "2026-01-01T00:00:02.000000Z", "workload": "tg4"},
            {"status": "ok", "ray_node_id": "n2", "started_at": "2026-01-01T00:00:00.200000Z",
             "ended_at": "2026-01-01T00:00:00.300000Z", "workload": "tg4"}]
    assert [(a["workload"], b["workload"]) for a, b in fleet.overlaps(recs)] == [("pp16", "tg4")]
    assert fleet.overlaps(recs[:1] + recs[2:]) == []


def test_without_ray_one_line_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    rc = main.main(["run", "--executor", "ray", "--model", "tiny", "--formats", "dummy",
                   "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "needs Ray, which is not installed" in err[0] and "pip install 'quantbench[fleet]'" in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_an_unreachable_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main.main(["run", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--model", "tiny",
                   "--formats", "dummy", "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in err[0]


def test_a_build_task_finds_a_cached_artifact_without_a_worker(monkeypatch, tiny, tmp_path):
    # The fleet-overhead run: a build task spawned a worker (~7 s of imports) to find an artifact
    # the cache already held, before every built variant's measurement.
    from quantbench.core.formats import get_format
    from quantbench.core.variant import Variant
    from quantbench.measure import fleet_node, runner

    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QUANTBENCH_DUMMY_BUILD_S", "0.01")
    suite = Suite(name="cached", model="tiny", formats=("dummy",))
    job = Variant(tiny.name, tiny.dir, tiny.digest, get_format("dummy"), "cpu", 1, suite)
    monkeypatch.setattr(fleet_node, "_this_node", lambda kind: ("n" * 56, kind))
    monkeypatch.setattr(fleet_node, "_on_node", lambda job, kind, here, calibrate=True: (
        dataclasses.replace(job, partial=str(here / "records.jsonl")), None))
    spawned = []
    monkeypatch.setattr(runner, "_spawn", lambda path, job, env=None: spawned.append(env) or runner.Ended(0))
    assert fleet_node._cached_artifact(job) == ""  # not built yet: the worker builds it
    fleet_node.build_on_node(job, "qb-kind:a")
    assert len(spawned) == 1
    from quantbench.backends.dummy import DummyBackend

    DummyBackend(job).build()  # now the node's cache holds it
    built = fleet_node.build_on_node(job, "qb-kind:a")
    assert len(spawned) == 1 and built.build_s == 0.0 and built.records == ()
    assert Path(built.artifact, "weights.txt").exists() and built.started_at <= built.ended_at
    # a format in a backend environment of its own is the worker's to judge, cached or not
    ct = dataclasses.replace(job, format=get_format("ct-w4a16"))
    assert fleet_node._cached_artifact(ct) == ""


def test_overhead_cold_drops_only_the_suites_built_artifacts(monkeypatch, tiny, tmp_path):
    # `scripts/fleet.py overhead --cold`: every run builds again, so the build tasks' overlap is timed
    import importlib.util

    from quantbench.backends.dummy import DummyBackend
    from quantbench.core.formats import get_format
    from quantbench.core.variant import Variant

    spec = importlib.util.spec_from_file_location("fleet_script", ROOT / "scripts" / "fleet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from quantbench.core.cache import cache_dir

    models = cache_dir() / "models"  # tiny, where `resolve` finds it; the builds go to a cache of the test's
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QUANTBENCH_DUMMY_BUILD_S", "0.01")
    suite = Suite(name="cold", model="tiny", formats=("dummy", "ct-w4a16"))
    job = Variant(tiny.name, tiny.dir, tiny.digest, get_format("dummy"), "cpu", suite.thread_count(), suite)
    DummyBackend(job).build()
    built = Path(DummyBackend(job).cached_artifact())
    assert built.is_dir() and built.is_relative_to(tmp_path)
    other = built.parent / "someone-elses-build"
    other.mkdir()
    gone = script.drop_artifacts(suite)  # ct-w4a16's environment is its worker's to judge: left alone
    assert gone == [f"dummy: {built.name}"] and not built.exists() and other.exists()
    assert script.drop_artifacts(suite) == []


def test_ray_address_without_the_ray_executor_is_one_line(capsys):
    rc = main.main(["run", "--ray-address", "127.0.0.1:6379", "--model", "tiny", "--formats", "dummy"])
    assert rc == 2 and "needs --executor ray" in capsys.readouterr().err


# ---- on a local two-kind cluster ----

@pytest.fixture(scope="module")
def cluster():
    """A head with 0 CPUs and one node per kind (2 CPUs, one quantbench-slot each), on 127.0.0.1."""
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "QUANTBENCH_DUMMY_STEP_S")}
    # Ray's worker processes, and the quantbench workers they spawn, import this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    os.environ["QUANTBENCH_DUMMY_STEP_S"] = STEP_S
    store = fleet.OBJECT_STORE_BYTES
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store,
                                                       "include_dashboard": False})
    nodes = {kind: c.add_node(num_cpus=2, object_store_memory=store, resources={"quantbench-slot": 1, kind: 1})
             for kind in KINDS}
    assert c.address.startswith("127.0.0.1:")
    ray.init(address=c.address, logging_level="WARNING")
    global ADDRESS
    ADDRESS = c.address
    try:
        yield {kind: n.node_id for kind, n in nodes.items()}
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_each_runs_every_variant_on_every_kind_into_one_file_one_at_a_time(cluster, tiny, tmp_path):
    out = tmp_path / "fleet.jsonl"
    seen = []  # the file's record count after each variant: records are written as they arrive
    fleet.run(SMALL.with_overrides(placement="each", node_kinds=KINDS), out,
              after_variant=lambda: seen.append(len(records.read(out))))
    recs = records.read(out)
    keys = [(r["node_kind"], r["format"], r["workload"]) for r in recs]
    want = [str(w) for w in SMALL.workloads()]  # load, pp16, tg4, ppl32 at @t1; no ppl at @t2
    assert len(want) == 7
    assert sorted(keys) == sorted((k, "dummy", w) for k in KINDS for w in want)  # each exactly once
    assert [r["reason"] for r in recs if r["status"] != "ok"] == []
    steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    assert sorted(steps) == [3, 3, 4, 4]  # one step per variant (2 kinds x @t1, @t2), as each arrived
    for r in recs:
        assert r["ray_node_id"] == cluster[r["node_kind"]]
        assert r["host"] == socket.gethostname()
        assert r["threads"] == r["omp_num_threads"] == int(r["workload"][-1])  # not Ray's 1 (num_cpus=0)
        assert r["started_at"] < r["ended_at"]
    # both variants of a kind could run at once (tasks ask no CPU); the slot serializes them
    assert fleet.overlaps(recs) == []
    assert len({r["run_id"] for r in recs}) == 1


def test_spread_deals_variants_over_the_kinds(cluster, tiny, tmp_path):
    out = tmp_path / "spread.jsonl"
    fleet.run(SMALL.with_overrides(node_kinds=KINDS), out)
    recs = records.read(out)
    assert all(r["status"] == "ok" for r in recs) and len(recs) == 7
    by_kind = {(r["workload"].split("@")[1], r["node_kind"]) for r in recs}
    assert by_kind == {("t1", "qb-kind:a"), ("t2", "qb-kind:b")}


def test_a_kind_no_node_offers_stops_before_anything_runs(cluster, tmp_path):
    with pytest.raises(UserError, match="node kind 'qb-kind:gpu' is offered by no node"):
        fleet.run(SMALL.with_overrides(node_kinds=("qb-kind:gpu",)), tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


def _idents(recs):
    return sorted((r["node_kind"], r["format"], r["workload"]) for r in recs)


def test_resume_resubmits_only_what_is_missing(cluster, tiny, tmp_path):
    out = tmp_path / "resume.jsonl"
    suite = SMALL.with_overrides(placement="each", node_kinds=KINDS)
    fleet.run(suite, out)
    full = records.read(out)
    # as a driver killed mid-run leaves it: kind b never reported, one of a's workloads is lost,
    # and the last line was cut mid-write
    kept = [r for r in full if r["node_kind"] == "qb-kind:a" and r["workload"] != "pp16@t2"]
    out.unlink()
    records.append(out, kept)
    with out.open("a") as f:
        f.write('{"model": "tiny", "torn')
    arrived = []
    fleet.run(suite, out, resume=True, after_variant=lambda: arrived.append(len(records.read(out))))
    recs = records.read(out)
    assert _idents(recs) == _idents(full)  # every (kind, variant, workload) exactly once
    assert recs[:len(kept)] == kept  # nothing written is lost or rewritten
    new = recs[len(kept):]
    assert {r["run_id"] for r in new} != {r["run_id"] for r in kept}
    # only what was missing went out: kind b's two variants and the one workload of a's @t2
    assert _idents(new) == sorted([("qb-kind:a", "dummy", "pp16@t2")]
                                  + [("qb-kind:b", "dummy", str(w)) for w in SMALL.workloads()])
    assert len(arrived) == 3 and all(r["status"] == "ok" for r in new)


def test_resume_after_a_killed_driver(cluster, tiny, tmp_path):
    """A driver in its own process, SIGKILLed once its first variant's records are written (Ray
    ends its tasks with it); --resume here finishes the rest, each record once."""
    import signal
    import subprocess
    import time

    out = tmp_path / "killed.jsonl"
    suite = SMALL.with_overrides(placement="each", node_kinds=KINDS)
    code = ("import sys; from quantbench.core.suite import Suite; from quantbench.measure import fleet; "
            f"fleet.run(Suite(**{dataclasses.asdict(suite)!r}), {str(out)!r}, address={ADDRESS!r})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out.exists() and records.read(out, quiet=True)) and driver.poll() is None:
        assert time.monotonic() < deadline, "the driver wrote nothing in 120 s"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = records.read(out, quiet=True)
    assert 0 < len(before) < 14, "killed before the end"
    fleet.run(suite, out, resume=True)
    recs = records.read(out)
    want = sorted((k, "dummy", str(w)) for k in KINDS for w in SMALL.workloads())
    assert _idents(recs) == want
    assert recs[:len(before)] == before
