"""Run history per machine, asv-style: `<history>/<machine>/<date>-<commit>.jsonl`, one file per run.

A machine is a fingerprint of what shapes the numbers, read from the records' `env` block: CPU
model, cores, RAM, GPU and driver (the hardware) and the torch / transformers / llama-cpp-python
versions (the software). Never the hostname: CI runners get a new one every job. The directory is
named `<readable slug>-<hash>` and holds a machine.json that says what the machine is.
Plain files: copy, cache or rsync a history like any other directory.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from quantbench.core import records
from quantbench.core.errors import UserError

HARDWARE = ("cpu", "cpu_physical_cores", "cpu_logical_cores", "ram_gib", "gpu", "gpu_driver")
SOFTWARE = ("torch", "transformers", "llama_cpp_python")
FINGERPRINT = HARDWARE + SOFTWARE
MACHINE_FILE = "machine.json"
_RUN_ID_DATE = re.compile(r"^(\d{8}T\d{6}Z)")


def machine(env: dict | None) -> dict:
    """Returns the fingerprint fields of a record's env block, in FINGERPRINT order.

    RAM is whole GiB (the kernel's total moves by a few MB between boots); absent fields are ''.
    """
    env = env or {}
    ram = env.get("ram_bytes")
    ram_gib = round(ram / 2**30) if isinstance(ram, (int, float)) and ram > 0 else ""
    return {k: ram_gib if k == "ram_gib" else env.get(k, "") for k in FINGERPRINT}


def _hash(fields: dict, names: tuple[str, ...]) -> str:
    blob = json.dumps({k: fields.get(k, "") for k in names}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    # marketing words, core counts and clock speed make names long and say nothing new
    text = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|\d+-core|@.*$", " ", str(text).lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-")


def _readable(fields: dict) -> str:
    parts = [_slug(fields.get("cpu") or "unknown-cpu")[:24]]
    if fields.get("cpu_physical_cores"):
        parts.append(f"{fields['cpu_physical_cores']}c")
    if fields.get("ram_gib") != "":
        parts.append(f"{fields.get('ram_gib')}g")
    if fields.get("gpu"):
        parts.append(_slug(fields["gpu"]).replace("nvidia-", "")[:20])
    return "-".join(p for p in parts if p)


def fingerprint(fields: dict) -> str:
    """Returns the machine directory name: readable slug + hash of every fingerprint field.

    machine(env) gives `fields`: 'amd-epyc-2c-24g-3f9a0c1e' (CPU, physical cores, GiB, GPU if any).
    """
    return f"{_readable(fields)}-{_hash(fields, FINGERPRINT)}"


def hardware_id(fields: dict) -> str:
    """Returns the fingerprint of the hardware fields alone (the software versions left out)."""
    return f"{_readable(fields)}-hw{_hash(fields, HARDWARE)[:6]}"  # never mistaken for a directory


def differences(a: dict, b: dict) -> list[str]:
    """Returns 'FIELD A -> B' for each fingerprint field that differs between two machine() dicts."""
    return [f"{k} {a.get(k, '')!r} -> {b.get(k, '')!r}" for k in FINGERPRINT if a.get(k, "") != b.get(k, "")]


def machines_of(recs: list[dict]) -> dict[str, dict]:
    """Returns fingerprint -> machine() of the records that carry an env block."""
    out = {}
    for r in recs:
        if isinstance(r.get("env"), dict):
            m = machine(r["env"])
            out.setdefault(fingerprint(m), m)
    return out


def _run_date(recs: list[dict]) -> str:
    """Returns the run's start as 20261126T133019Z: the earliest run_id, else timestamp, else now."""
    starts = [m.group(1) for r in recs if (m := _RUN_ID_DATE.match(str(r.get("run_id", ""))))]
    if starts:
        return min(starts)
    stamps = [str(r["timestamp"]).replace("-", "").replace(":", "") for r in recs if r.get("timestamp")]
    return min(stamps) if stamps else time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _commit(recs: list[dict]) -> str:
    commits = [r["env"].get("git_commit") for r in recs if isinstance(r.get("env"), dict)]
    commits = [c for c in commits if c]
    return _slug(commits[-1])[:12] if commits else "nocommit"


@dataclass(frozen=True)
class Run:
    """One tracked run: its file under the history and what its name and records say."""
    path: Path
    machine: str  # fingerprint directory name
    date: str     # 20261126T133019Z
    commit: str

    def records(self) -> list[dict]:
        return records.read(self.path)


def track(paths, history_dir: str | os.PathLike) -> list[Run]:
    """Adds the records of results files to a history, one file per (machine, suite); returns the runs.

    A file keeps the last record of each (model, format, device, workload), as compare does.
    Tracking the same results again rewrites the same file (its name comes from the records),
    so a resumed run tracked twice is one run, not two.
    """
    history_dir = Path(history_dir)
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in paths:
        for r in records.read(p):
            fields = machine(r.get("env"))
            groups.setdefault((fingerprint(fields), str(r.get("suite_hash", ""))), []).append(r)
    out: list[Run] = []
    for (fp, suite_hash), recs in groups.items():
        last = {records.key(r): r for r in recs}  # a re-run replaces its key
        recs = list(last.values())
        d = history_dir / fp
        d.mkdir(parents=True, exist_ok=True)
        info = {"fingerprint": fp, "hardware": hardware_id(machine(recs[0].get("env"))),
                **machine(recs[0].get("env"))}
        (d / MACHINE_FILE).write_text(json.dumps(info, indent=1, sort_keys=False) + "\n")
        date, commit = _run_date(recs), _commit(recs)
        if any(r.machine == fp and (r.date, r.commit) == (date, commit) for r in out):
            commit = f"{commit}-{suite_hash}"  # two suites started in the same second: keep both
        run = Run(d / f"{date}-{commit}.jsonl", fp, date, commit)
        tmp = run.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
        tmp.replace(run.path)  # atomic: a reader never sees half a run
        out.append(run)
    return out


def runs(history_dir: str | os.PathLike) -> list[Run]:
    """Returns every tracked run under a history, oldest first (by date, then machine)."""
    history_dir = Path(history_dir)
    if not history_dir.is_dir():
        raise UserError(f"history '{history_dir}' is not a directory; add runs with "
                        f"`quantbench track RESULTS --history {history_dir}`")
    out = []
    for info in history_dir.glob(f"*/{MACHINE_FILE}"):
        for f in info.parent.glob("*.jsonl"):
            date, _, commit = f.stem.partition("-")
            out.append(Run(f, info.parent.name, date, commit))
    return sorted(out, key=lambda r: (r.date, r.machine, r.commit))


def series(all_runs: list[Run], metrics) -> dict[tuple, list[tuple[int, float, dict]]]:
    """Returns (hardware id, model, format, device, workload, metric) -> [(run index, value,
    record)], oldest first: each ok record's finite numeric values of `metrics`.

    A series is one variant's metric on one machine's hardware (hardware_id), so a library
    upgrade stays inside its series; the run index counts every run of the history."""
    out: dict[tuple, list[tuple[int, float, dict]]] = {}
    for i, run in enumerate(all_runs):
        for r in run.records():
            if r.get("status") != "ok":
                continue
            hw = hardware_id(machine(r.get("env")))
            for metric in metrics:
                v = r.get(metric)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    key = (hw, *(r[k] for k in records.IDENTITY), metric)
                    out.setdefault(key, []).append((i, float(v), r))
    return out


def read_history(history_dir) -> pandas.DataFrame:  # noqa: F821
    """Returns every record of a history as a DataFrame (read_results columns plus run columns).

    Added columns: `machine` (fingerprint directory), `run_date`, `commit`, `run` (the order of
    the run in the whole history, 0 = oldest).
    """
    import pandas as pd

    all_runs = runs(history_dir)
    if not all_runs:
        return pd.DataFrame(columns=[*records.IDENTITY, "status", "machine", "run_date", "commit", "run"])
    frames = []
    for i, run in enumerate(all_runs):
        df = records.read_results(run.path)
        frames.append(df.assign(machine=run.machine, run_date=run.date, commit=run.commit, run=i))
    return pd.concat(frames, ignore_index=True)


def baseline_for(history_dir, new_records: list[dict]) -> Run | None:
    """Returns the latest earlier run in a history on the same machine with the same suite_hash.

    Same machine = same fingerprint; earlier = dated no later than the new run and sharing none
    of its run_ids (so `run --history` followed by `compare --baseline auto` never picks itself).
    None when no run fits.
    """
    fps = machines_of(new_records)
    if len(fps) != 1:
        raise UserError(f"--baseline auto: the new results come from {len(fps)} machines "
                        f"({', '.join(fps) or 'no env block'}); compare one machine's run at a time")
    fp = next(iter(fps))
    hashes = {r.get("suite_hash") for r in new_records}
    new_ids = {r.get("run_id") for r in new_records}
    new_date = _run_date(new_records)
    for run in reversed([r for r in runs(history_dir) if r.machine == fp]):
        if run.date > new_date:
            continue
        recs = run.records()
        if hashes & {r.get("suite_hash") for r in recs} and not new_ids & {r.get("run_id") for r in recs}:
            return run
    return None


def print_tracked(tracked: list[Run]) -> None:
    for run in tracked:
        print(f"history: {run.path}")
