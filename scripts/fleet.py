"""The fleet executor beside its Ray cluster: `demo` runs suites/fleet.toml on a local cluster (or a
real one), `overhead` times the local executor against `--executor ray` on one machine.

    python scripts/fleet.py demo [--address HOST:PORT]   # what `nox -s fleet` runs
    python scripts/fleet.py overhead --variants 1 4      # docs/fleet.md "Overhead"

A local cluster is a head with no CPUs (the driver measures nothing) and one node per kind of the
suite's node_kinds, each offering one quantbench-slot and its kind label, on 127.0.0.1, with a
100 MiB object store (only records travel). The nodes share this host: the slot keeps each to one
measurement at a time, but two kinds here still measure at once; a comparison needs real hosts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "fleet.toml"
SLOT = "quantbench-slot"
STORE_BYTES = 100 * 2**20


def local_cluster(kinds: list[str]):
    """Returns a ray.cluster_utils.Cluster: a 0-CPU head and one slotted node per kind."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE_BYTES,
                                                       "include_dashboard": False})
    for kind in kinds:
        c.add_node(num_cpus=1, object_store_memory=STORE_BYTES, resources={SLOT: 1, kind: 1})
    c.wait_for_nodes()
    return c


def demo(args) -> int:
    suite = Path(args.suite)
    kinds = tomllib.loads(suite.read_text()).get("node_kinds", [])
    cluster = None if args.address else local_cluster(kinds)
    address = args.address or cluster.address
    print(f"[fleet] {'cluster at ' + address if args.address else 'local cluster at ' + address} "
          f"({', '.join(kinds) or 'any node'})", flush=True)
    try:
        return subprocess.call([sys.executable, "-m", "quantbench", "run", "--suite", str(suite), "--executor",
                                "ray", "--ray-address", address, "--out", args.out, "--report", args.report,
                                *args.rest])
    finally:
        if cluster:
            cluster.shutdown()


def overhead(args) -> int:
    """Prints wall seconds of the local executor and of --executor ray on a one-node local
    cluster, per number of variants (the dummy format at 1..N threads: N variants, one build)."""
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from quantbench.core.suite import Suite
    from quantbench.measure import fleet, runner

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fleet.connect(None)
    init_s = time.perf_counter() - t0
    rows = []
    for n in args.variants:
        suite = Suite(name="overhead", model="tiny", formats=("dummy",), prompt_lengths=(16,), gen_tokens=4,
                      min_samples=2, time_budget_s=0.5, n_ctx=32, ppl_windows=1, quality_budget_s=5.0,
                      kld_tokens=16, threads=tuple(range(1, n + 1)))
        for _ in range(args.repeat):
            t = time.perf_counter()
            runner.run(suite, out / f"local-{n}.jsonl")
            local_s = time.perf_counter() - t
            t = time.perf_counter()
            fleet.run(suite, out / f"ray-{n}.jsonl")
            ray_s = time.perf_counter() - t
            rows.append((n, local_s, ray_s))
    print(f"\nray.init (one-node local cluster): {init_s:.1f} s; load before/after: {args.load}, "
          f"{os.getloadavg()[0]:.1f}")
    print("| variants | local s | ray s | ray − local s | per variant s |\n|---:|---:|---:|---:|---:|")
    for n, local_s, ray_s in rows:
        print(f"| {n} | {local_s:.1f} | {ray_s:.1f} | {ray_s - local_s:+.1f} | {(ray_s - local_s) / n:+.2f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run suites/fleet.toml on a local (or the given) Ray cluster")
    d.add_argument("--address", help="a running cluster's HOST:PORT (default: start a local one)")
    d.add_argument("--suite", default=str(SUITE))
    d.add_argument("--out", default="results/fleet.jsonl")
    d.add_argument("--report", default="reports/fleet.html")
    d.add_argument("rest", nargs="*", help="more `quantbench run` flags, after --")
    o = sub.add_parser("overhead", help="wall time: local executor vs --executor ray, one machine")
    o.add_argument("--variants", type=int, nargs="+", default=[1, 4])
    o.add_argument("--repeat", type=int, default=1)
    o.add_argument("--out-dir", default="/tmp/quantbench-fleet-overhead")
    args = ap.parse_args(argv)
    args.load = f"{os.getloadavg()[0]:.1f}"
    return demo(args) if args.cmd == "demo" else overhead(args)


if __name__ == "__main__":
    sys.exit(main())
