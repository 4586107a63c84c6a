"""Synthetic run histories: suite runs shaped like test_compare's (seeded noise of a shared 2-core
CPU), tracked into a history directory with increasing dates and one commit per run."""
from test_compare import run_records

from quantbench.track import history

ENV = {"host": "ci-1", "os": "Linux", "cpu": "AMD EPYC 7763 64-Core Processor", "cpu_physical_cores": 2,
       "cpu_logical_cores": 2, "ram_bytes": 25_276_510_208, "python": "3.11.7", "torch": "2.13.0+cpu",
       "transformers": "5.24.0", "llama_cpp_python": "0.3.36"}


def commit(i: int) -> str:
    return f"c{i:03d}beef0a"  # unique per run in its first 7 characters (the x labels)


def one_run(i: int, seed: int = 0, env: dict | None = None, suite_hash: str = "s1",
            load_rss: dict | None = None, **kw) -> list[dict]:
    """Returns the records of run i (dated 2026-11-01 + i hours), ppl/slow etc. as run_records;
    load_rss: format -> the load record's peak_rss_bytes (default 900 MB)."""
    recs = run_records(seed * 1000 + i, **kw)
    out = []
    for r in recs:
        out.append({**r, "run_id": f"202611{1 + i // 24:02d}T{i % 24:02d}0000Z-{100 + i}",
                    "suite": "ci", "suite_hash": suite_hash,
                    "env": {**ENV, **(env or {}), "git_commit": commit(i)}})
    for fmt in sorted({r["format"] for r in recs}):  # the load record: bytes per variant
        first = next(r for r in out if r["format"] == fmt)
        out.append({k: first[k] for k in ("schema_version", "run_id", "model", "format", "device",
                                           "status", "reason", "suite", "suite_hash", "env")}
                   | {"workload": "load", "weights_bytes": 538_060_032,
                      "peak_rss_bytes": (load_rss or {}).get(fmt, 900_000_000)})
    return out


def write_history(tmp_path, n: int, per_run=lambda i: {}, seed: int = 0, hist=None):
    """Tracks n runs into tmp_path/history (per_run(i) gives run i's run_records keywords)."""
    hist = hist or tmp_path / "history"
    for i in range(n):
        res = tmp_path / f"run{i}.jsonl"
        history.records.append(res, one_run(i, seed, **per_run(i)))
        history.track([res], hist)
        res.unlink()
    return hist
