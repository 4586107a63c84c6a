"""The fleet executor beside its Ray cluster: `demo` runs suites/fleet.toml on a local cluster (or a
real one), `overhead` times the local executor against `--executor ray` on one machine.

    python scripts/fleet.py demo [--address HOST:PORT]   # what `nox -s fleet` runs
    python scripts/fleet.py overhead --variants 1 4      # docs/fleet.md "Overhead"
    python scripts/fleet.py overhead --suite suites/fleet-overhead.toml --repeat 3   # real formats

A local cluster is a head with no CPUs (the driver measures nothing) and one node per kind of the
suite's node_kinds, each offering one quantbench-slot and its kind label, on 127.0.0.1, with a
100 MiB object store (only records travel). The nodes share this host: the slot keeps each to one
measurement at a time, but two kinds here still measure at once; a comparison needs real hosts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantbench.core.suite import Suite

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


def overhead_suites(args) -> list[tuple[int, Suite]]:
    """Returns (variants, suite) per --variants N: the dummy format on `tiny` at 1..N threads (N
    variants, one build), or --suite's first N formats, run on any node (its node_kinds dropped)."""
    from quantbench.core.errors import UserError
    from quantbench.core.suite import Suite, load_suite
    from quantbench.measure import runner

    if not args.suite:
        return [(n, Suite(name="overhead", model="tiny", formats=("dummy",), prompt_lengths=(16,), gen_tokens=4,
                          min_samples=2, time_budget_s=0.5, n_ctx=32, ppl_windows=1, quality_budget_s=5.0,
                          kld_tokens=16, threads=tuple(range(1, n + 1))))
                for n in args.variants or (1, 4)]
    full = load_suite(args.suite).with_overrides(node_kinds=(), placement="spread")
    out = []
    for n in args.variants or (len(full.formats),):
        if n > len(full.formats):
            raise UserError(f"--variants {n}: {args.suite} has {len(full.formats)} formats")
        suite = full.with_overrides(formats=full.formats[:n])
        out.append((sum(len(runner.plan(m)) * len(m.thread_list) for m in suite.per_model()), suite))
    return out


def drop_artifacts(suite: Suite) -> list[str]:
    """Removes from this machine's cache the artefacts of the suite's formats that build in the
    main environment (`Backend.cached_artifact`), so the next run builds them again; a GGUF's F16
    conversion, which every GGUF format is made from, stays. Returns the entries removed."""
    import shutil

    from quantbench.backends import get_backend_class
    from quantbench.core.formats import get_format
    from quantbench.core.variant import Variant
    from quantbench.inputs.models import resolve

    model, gone = resolve(suite.model), []
    for name in suite.formats:
        fmt = get_format(name)
        if fmt.env or fmt.param == "F16":
            continue
        v = Variant(model.name, model.dir, model.digest, fmt, "cpu", suite.thread_count(), suite)
        if path := get_backend_class(fmt.backend)(v).cached_artifact():
            entry = Path(path) if Path(path).is_dir() else Path(path).parent
            shutil.rmtree(entry)
            gone.append(f"{name}: {entry.name}")
    return gone


def go_cold(args, suite: Suite) -> None:
    """With --cold, drops the suite's built artefacts before a run and says which."""
    if args.cold:
        print(f"[overhead] cold: removed {', '.join(drop_artifacts(suite)) or 'nothing'}", flush=True)


def overhead(args) -> int:
    """Prints wall seconds of the local executor and of --executor ray on a one-node local
    cluster, per number of variants: each run, then per N the medians, ray − local and ray / local
    (issue #26's target: ray / local ≤ 1.05, with ray.init's start-up counted apart)."""
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from quantbench.core.errors import UserError
    from quantbench.measure import fleet, runner

    try:
        suites = overhead_suites(args)  # a bad --suite fails before Ray starts
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fleet.connect(None)
    init_s = time.perf_counter() - t0
    rows = []
    for n, suite in suites:
        local, ray = [], []
        for i in range(args.repeat):
            go_cold(args, suite)
            t = time.perf_counter()
            runner.run(suite, out / f"{suite.name}-local-{n}.jsonl")
            local.append(time.perf_counter() - t)
            go_cold(args, suite)
            t = time.perf_counter()
            fleet.run(suite, out / f"{suite.name}-ray-{n}.jsonl")
            ray.append(time.perf_counter() - t)
            print(f"[overhead] {n} variants ({', '.join(suite.formats)}), run {i + 1}/{args.repeat}: "
                  f"local {local[-1]:.1f} s, ray {ray[-1]:.1f} s", flush=True)
        rows.append((n, local, ray))
    cold = " (cold: each run builds)" if args.cold else ""
    print(f"\nsuite: {args.suite or 'the dummy format on tiny'}{cold}; "
          f"ray.init (one-node local cluster): {init_s:.1f} s, not in the times below; "
          f"load before/after: {args.load}, {os.getloadavg()[0]:.1f}")
    print(f"| variants | local s ({args.repeat} runs) | ray s ({args.repeat} runs) | median ray − local s "
          "| per variant s | median ratio ray/local | ≤ 1.05 |\n|---:|---|---|---:|---:|---:|:---:|")
    for n, local, ray in rows:
        lo, hi = statistics.median(local), statistics.median(ray)
        print(f"| {n} | {', '.join(f'{x:.1f}' for x in local)} | {', '.join(f'{x:.1f}' for x in ray)} "
              f"| {hi - lo:+.1f} | {(hi - lo) / n:+.2f} | {hi / lo:.3f} | {'yes' if hi / lo <= 1.05 else 'no'} |")
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
    o.add_argument("--suite", help="a suite file to time instead of the dummy format on tiny (e.g. "
                   "suites/fleet-overhead.toml); its node_kinds are dropped: one node")
    o.add_argument("--variants", type=int, nargs="+",
                   help="N per row: the dummy format at 1..N threads (default 1 4), or --suite's first N "
                        "formats (default all)")
    o.add_argument("--repeat", type=int, default=1)
    o.add_argument("--cold", action="store_true",
                   help="remove the suite's built artefacts before every run, so each run builds them (on Ray "
                        "as build tasks that overlap one another): what overlapping the builds buys")
    o.add_argument("--out-dir", default="/tmp/quantbench-fleet-overhead")
    args = ap.parse_args(argv)
    args.load = f"{os.getloadavg()[0]:.1f}"
    return demo(args) if args.cmd == "demo" else overhead(args)


if __name__ == "__main__":
    sys.exit(main())
