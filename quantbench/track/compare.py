"""Regression gate: `quantbench compare BASE NEW --fail decode_tok_s:-5% ppl:+0.5%`.

Records are joined on (model, format, device, workload); only keys `ok` on both sides are judged,
and a key ok in base but failed, skipped or missing in new is a regression.
Deterministic metrics (ppl, KLD, bytes) cross a gate when their change passes the threshold.
Timing metrics are judged on raw samples, asv-style: a regression needs BOTH a one-sided
Mann-Whitney U test at p < alpha (Mann & Whitney 1947; scipy.stats.mannwhitneyu, normal approximation
with tie and continuity correction) AND a median change past the threshold, so a
significant-but-small drift between two runs does not fail, while a consistent slowdown past the
floor does. A seeded bootstrap CI of the median ratio is reported beside it.
The default threshold of a timing is a small floor (5 %); a history of runs (`--history`) raises
a default gate to the noise that metric showed on that machine and variant (`noise_floor`: a
multiple of the robust spread of run-to-run changes), so a noisy metric (load RSS with
bitsandbytes) gets its own learnt floor. `--fail` gates are fixed: nothing learnt moves them.
A timing gate that cannot fire for its sample counts (the smallest p Mann-Whitney can give with
n1 vs n2 samples is not below alpha) is `skipped: too few samples`, never a silent pass.
`judge` is the one verdict on a (metric, base record, new record); `quantbench trend` calls it
too, so a step in the trend and `compare` on the two runs either side of it always agree.
The records' `env` blocks name the machines: differing fingerprints (history.py) are a warning,
or an error with --strict-machine.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from quantbench.core import records
from quantbench.core.errors import UserError

ALPHA = 0.01         # one-sided significance a timing regression needs
FLOOR_Z = 3.0        # a learnt floor: this many robust SDs of the change between successive runs
MIN_RUNS = 5         # runs of a series before its noise is learnt (4 successive changes)
BOOTSTRAP = 2000     # resamples for the CI of the median ratio
SEED = 0             # bootstrap seed: the same inputs always print the same CI


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    default: str                # default gate ('' = reported, not gated); see tests/test_compare.py
    samples: str = ""           # raw-sample field judged instead of the scalar
    per_sample: str = "s"       # what one sample becomes in metric units (SAMPLE_TO_METRIC)
    quantile: float = 0.5       # statistic of the samples the metric is
    floor: float = 0.0          # absolute change below which nothing is called (noise floor)


METRICS = {
    # Timings: p < alpha on the samples AND past a 5% floor, raised by a history's noise.
    "prefill_tok_s": Metric(True, "-5%", "prefill_samples_s", "n_prompt/s"),
    "decode_tok_s": Metric(True, "-5%", "decode_samples_s", "batch/s"),
    # Same samples as the two above, so reported only; p90 also moves with one contended rep.
    "ttft_s": Metric(False, "", "prefill_samples_s"),
    "decode_p50_s": Metric(False, "", "decode_samples_s"),
    "decode_p90_s": Metric(False, "", "decode_samples_s", quantile=0.9),
    "perf_s": Metric(False, "+5%", "perf_samples_s"),  # pytest-benchmark files
    "ppl": Metric(False, "+0.5%"),
    "ppl_full": Metric(False, "+0.5%"),
    "kld_mean": Metric(False, "+10%", floor=1e-4),
    "kld_p99": Metric(False, "+10%", floor=1e-3),
    "top1_agree": Metric(True, "-0.5pp"),
    "weights_bytes": Metric(False, "+1%"),
    "kv_cache_bytes": Metric(False, "+1%"),
    "peak_rss_bytes": Metric(False, "+15%"),
}
SAMPLE_TO_METRIC = {"s": lambda s, rec: s, "batch/s": lambda s, rec: (rec.get("batch") or 1) / s,
                    "n_prompt/s": lambda s, rec: rec["n_prompt"] / s}
SKIPPED = "skipped: too few samples"
VERDICT_ORDER = {"REGRESSION": 0, "noisy": 1, SKIPPED: 2, "improved": 3, "ok": 4, "-": 5}
COLUMNS = ["key", "metric", "base", "new", "change", "ci_low", "ci_high", "p", "gate", "verdict"]
_SPEC = re.compile(r"^([a-z0-9_]+):([+-])(\d+(?:\.\d*)?|\.\d+)(%|pp)?$")


@dataclass(frozen=True)
class Gate:
    """A threshold on one metric: signed (-0.05 = a 5% drop fails), relative or absolute.

    source: "default" (METRICS), "--fail" (the user's, fixed) or "noise" (a default raised to the
    noise learnt from `runs` runs of a history)."""
    metric: str
    threshold: float
    relative: bool = True
    floor: float = 0.0
    source: str = "default"
    runs: int = 0

    def __post_init__(self):
        if self.metric not in METRICS:
            close = difflib.get_close_matches(self.metric, list(METRICS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"unknown metric '{self.metric}' in --fail: {hint}"
                            f"the metrics are {', '.join(METRICS)}")
        if self.threshold * self._worse < 0:
            way, sign = ("higher", "-") if self._worse < 0 else ("lower", "+")
            raise UserError(f"--fail {self}: {self.metric} is {way}-is-better; a regression "
                            f"threshold has sign '{sign}', e.g. {self.metric}:{sign}5%")

    @property
    def _worse(self) -> int:
        return -1 if METRICS[self.metric].higher_is_better else 1

    def __str__(self) -> str:
        return f"{self.metric}:{self.threshold * 100:+g}%" if self.relative else \
            f"{self.metric}:{self.threshold:+g}"

    def label(self) -> str:
        """Returns the threshold and where it came from: '-5%', '-12.3% (noise, 20 runs)', '-60% (--fail)'."""
        t = str(self).partition(":")[2]
        if self.source == "noise":
            return f"{t} (noise, {self.runs} runs)"
        return f"{t} (--fail)" if self.source == "--fail" else t

    def change(self, base: float, new: float) -> float:
        """Returns the change the threshold is compared with: (new - base)/|base| or new - base."""
        if not self.relative:
            return new - base
        if base == 0:
            return 0.0 if new == 0 else math.copysign(math.inf, new)
        return (new - base) / abs(base)

    def _past(self, base: float, new: float, way: int) -> bool:
        beyond = self.change(base, new) * self._worse * way > abs(self.threshold)
        return beyond and abs(new - base) > self.floor

    def check(self, base: float, new: float) -> str | None:
        """Returns a one-line message when new is worse than base past the threshold, else None."""
        if not self._past(base, new, 1):
            return None
        c = self.change(base, new)
        shown = f"{c:+.2%}" if self.relative else f"{c:+.4g}"
        learnt = f" (learnt from the noise of {self.runs} runs)" if self.source == "noise" else ""
        return f"{self.metric} {base:.5g} -> {new:.5g} ({shown}) crosses {self}{learnt}"

    def improved(self, base: float, new: float) -> bool:
        """Returns True when new is better than base by more than the threshold."""
        return self._past(base, new, -1)


def parse_gate(spec: str) -> Gate:
    """Returns the Gate for 'METRIC:THRESHOLD': -5% / +0.5% relative, +0.002 or -0.5pp absolute."""
    m = _SPEC.match(spec.strip())
    if not m:
        name = spec.split(":")[0]
        if ":" in spec and name not in METRICS:
            Gate(name, 0.0)  # raises the unknown-metric error with its did-you-mean
        raise UserError(f"--fail '{spec}': write METRIC:THRESHOLD with a sign, e.g. "
                        f"decode_tok_s:-5%, ppl:+0.5%, kld_mean:+0.002, top1_agree:-0.5pp")
    name, sign, number, unit = m.groups()
    value = float(sign + number) / (100 if unit else 1)
    return Gate(name, value, relative=unit == "%", floor=METRICS[name].floor if name in METRICS else 0)


def default_gates() -> dict[str, Gate]:
    """Returns metric -> default Gate from the METRICS table."""
    return {name: parse_gate(f"{name}:{m.default}") for name, m in METRICS.items() if m.default}


def mann_whitney_greater(x, y) -> float:
    """Returns the one-sided p-value that x tends to be larger than y (Mann-Whitney U).

    scipy.stats.mannwhitneyu with the normal approximation, tie and continuity correction
    (method="asymptotic"): scipy's default would switch to the exact distribution for small untied
    samples, which moves the smallest p at 3 vs 3 from 0.04 to 0.05 and with it which sample counts
    can fire a gate (`min_p`). All values tied: 1.0, no evidence either way (scipy says NaN).
    """
    # imported here: scipy.stats costs ~1 s of import (2 cores), paid only when timings are judged
    from scipy.stats import mannwhitneyu

    p = mannwhitneyu(np.asarray(x, float), np.asarray(y, float), alternative="greater",
                     method="asymptotic", use_continuity=True).pvalue
    return 1.0 if math.isnan(p) else float(p)


def min_p(n1: int, n2: int) -> float:
    """Returns the smallest one-sided Mann-Whitney p with n1 vs n2 samples (every x above every y).

    3 vs 3 gives 0.040, 4 vs 4 0.015, 5 vs 5 0.0061: at alpha 0.01 equal counts need 5 each.
    """
    return mann_whitney_greater(np.arange(n1) + n2, np.arange(n2))


def bootstrap_ratio_ci(x, y, q: float = 0.5, n: int = BOOTSTRAP, seed: int = SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """Returns the percentile-bootstrap CI of quantile_q(y) / quantile_q(x), seeded."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    ratios = []
    for lo in range(0, n, 250):  # chunks keep memory flat for long sample lists
        k = min(250, n - lo)
        bx = np.quantile(x[rng.integers(0, len(x), (k, len(x)))], q, axis=1)
        by = np.quantile(y[rng.integers(0, len(y), (k, len(y)))], q, axis=1)
        ratios.append(by / bx)
    lo_hi = np.quantile(np.concatenate(ratios), [(1 - level) / 2, (1 + level) / 2])
    return float(lo_hi[0]), float(lo_hi[1])


def _samples(metric: Metric, rec: dict) -> np.ndarray | None:
    raw = rec.get(metric.samples) if metric.samples else None
    if not raw or (metric.per_sample == "n_prompt/s" and not rec.get("n_prompt")):
        return None
    s = np.asarray(raw, float)
    return SAMPLE_TO_METRIC[metric.per_sample](s[s > 0], rec)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ppl metric -> the per-window NLL list it is the exp-mean of
_WINDOW_NLL = {"ppl": "window_nll", "ppl_full": "window_nll_full"}


def _common_windows(name: str, b: dict, n: dict) -> tuple[float, float] | None:
    """Returns (base, new) perplexity over the windows both runs scored, when both kept their
    per-window NLL sums; None otherwise (the recorded figures are compared then)."""
    col = _WINDOW_NLL.get(name)
    nb, nn = (b.get(col), n.get(col)) if col else (None, None)
    if not (isinstance(nb, list) and isinstance(nn, list) and nb and nn):
        return None
    k = min(len(nb), len(nn))
    if k == len(nb) == len(nn):
        return None
    per_window = {"ppl": "window_tokens", "ppl_full": "n_ctx"}[name]
    t = b.get(per_window) or n.get(per_window)
    if not t:
        return None
    t = t - 1 if name == "ppl_full" else t  # every position but the last is scored
    return math.exp(sum(nb[:k]) / (k * t)), math.exp(sum(nn[:k]) / (k * t))


def judge(name: str, gate: Gate | None, b: dict, n: dict, alpha: float = ALPHA) -> dict | None:
    """Returns the verdict row of one metric between two ok records, or None when unmeasured.

    Row: metric, base, new, change, ci_low, ci_high, p, gate (its label), verdict (REGRESSION,
    noisy, SKIPPED, improved, ok, '-' when ungated), message (the crossed gate), n_samples
    ((n1, n2) or None).
    """
    metric = METRICS[name]
    xs, ys = _samples(metric, b), _samples(metric, n)
    p = p_better = ci = None
    if xs is not None and ys is not None and len(xs) and len(ys):
        bv, nv = float(np.quantile(xs, metric.quantile)), float(np.quantile(ys, metric.quantile))
        worse, better = (xs, ys) if metric.higher_is_better else (ys, xs)
        p, p_better = mann_whitney_greater(worse, better), mann_whitney_greater(better, worse)
        ci = bootstrap_ratio_ci(xs, ys, metric.quantile)
    else:
        bv, nv = _common_windows(name, b, n) or (b.get(name), n.get(name))
        if not _is_num(bv):
            return None
        if not _is_num(nv) or not math.isfinite(nv):  # a metric that went missing or NaN regressed
            return {"metric": name, "base": bv, "new": nv if _is_num(nv) else None, "change": None,
                    "ci_low": None, "ci_high": None, "p": None, "gate": gate.label() if gate else "",
                    "verdict": "REGRESSION" if gate else "-",
                    "message": f"{name} {bv:.5g} -> {'NaN' if _is_num(nv) else 'missing'}",
                    "n_samples": None}
    msg = gate.check(bv, nv) if gate else None
    if msg and p is not None:
        msg += f", p={p:.2g} ({len(xs)} vs {len(ys)} samples)"
    if not gate:
        verdict = "-"
    elif p is not None and min_p(len(xs), len(ys)) >= alpha:
        verdict = SKIPPED
    elif msg:
        verdict = "REGRESSION" if p is None or p < alpha else "noisy"
    elif gate.improved(bv, nv) and (p_better is None or p_better < alpha):
        verdict = "improved"
    else:
        verdict = "ok"
    return {"metric": name, "base": bv, "new": nv, "change": (nv - bv) / abs(bv) if bv else 0.0,
            "ci_low": ci[0] - 1 if ci else None, "ci_high": ci[1] - 1 if ci else None,
            "p": p, "gate": gate.label() if gate else "", "verdict": verdict, "message": msg,
            "n_samples": (len(xs), len(ys)) if p is not None else None}


@dataclass
class CompareResult:
    table: pandas.DataFrame  # noqa: F821  COLUMNS, one row per (key, metric) judged
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. the two sides ran on different machines

    @property
    def ok(self) -> bool:
        return not self.regressions

    def markdown(self) -> str:
        """Returns a markdown table of every judged (key, metric), regressions first."""
        def num(v, fmt="{:.5g}"):
            if v is None or v != v:
                return ""
            return v if isinstance(v, str) else f"{v:,}" if isinstance(v, int) else fmt.format(v)

        lines = ["| key | metric | base | new | change | p | gate | verdict |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.table.itertuples():
            change = num(r.change, "{:+.2%}")
            if r.ci_low is not None and r.ci_low == r.ci_low:
                change += f" [{r.ci_low:+.1%}, {r.ci_high:+.1%}]"
            lines.append(f"| {r.key} | {r.metric} | {num(r.base)} | {num(r.new)} | {change} | "
                         f"{num(r.p, '{:.2g}')} | {num(r.gate)} | {r.verdict} |")
        return "\n".join(lines) + "\n"


def _frame(recs: list[dict]):
    import pandas as pd

    rows = [{**{k: r[k] for k in records.IDENTITY}, "status": r["status"],
             "reason": r.get("reason", ""), "schema_version": r.get("schema_version"), "rec": r}
            for r in recs]
    df = pd.DataFrame(rows, columns=[*records.IDENTITY, "status", "reason", "schema_version", "rec"])
    return df.drop_duplicates(list(records.IDENTITY), keep="last")  # a re-run replaces its key


def gates_for(fail: list[str] | None = None) -> dict[str, Gate]:
    """Returns metric -> Gate: the defaults overridden by the `--fail` specs (fixed gates)."""
    user = {g.metric: replace(g, source="--fail") for g in map(parse_gate, fail or [])}
    return default_gates() | user


@dataclass(frozen=True)
class Floor:
    """A relative noise floor learnt from one series (one variant's metric on one machine)."""
    value: float  # relative change; FLOOR_Z robust SDs of the change between successive runs
    runs: int     # runs it was learnt from


def noise_floor(values) -> Floor | None:
    """Returns FLOOR_Z x the robust SD of the relative change between successive runs, or None.

    sd = 1.4826 x median |ln(v[i+1] / v[i])|: the MAD about zero of the successive log-changes,
    scaled to a normal SD (Rousseeuw & Croux 1993); the median barely moves for a step or two in
    the series, so a real step does not widen its own floor. Rounded up to 0.1 %. None with fewer
    than MIN_RUNS values or a value <= 0 (no relative change). Runs 100, 102, 99, 101, 100:
    changes 2.0, 2.9, 2.0, 1.0 % (log), median 2.0 %, floor 3 x 1.4826 x 1.98 % = 8.9 %.
    """
    v = np.asarray(list(values), float)
    if len(v) < MIN_RUNS or not (v > 0).all():
        return None
    sd = 1.4826 * float(np.median(np.abs(np.diff(np.log(v)))))
    return Floor(math.ceil(FLOOR_Z * sd * 1000 - 1e-9) / 1000, len(v))


def floors_from_history(history_dir) -> dict[tuple, Floor]:
    """Returns (hardware id, model, format, device, workload, metric) -> Floor of every series of
    a history with enough runs (history.series)."""
    from quantbench.track import history

    out = {}
    for key, pts in history.series(history.runs(history_dir), METRICS).items():
        f = noise_floor(v for _, v, _ in pts)
        if f is not None:
            out[key] = f
    return out


def series_key(rec: dict, metric: str) -> tuple:
    """Returns the key of a record's metric in a history's series (history.series)."""
    from quantbench.track import history

    hw = history.hardware_id(history.machine(rec.get("env")))
    return (hw, *(rec[k] for k in records.IDENTITY), metric)


def gate_for(name: str, gates: dict[str, Gate], floors: dict[tuple, Floor] | None,
             rec: dict) -> Gate | None:
    """Returns the gate metric `name` of `rec` is judged against: the default raised to the learnt
    noise floor of its series when that is wider; a --fail gate or an absolute one as it is."""
    gate = gates.get(name)
    if gate is None or not floors or gate.source == "--fail" or not gate.relative:
        return gate
    f = floors.get(series_key(rec, name))
    if f is None or f.value <= abs(gate.threshold):
        return gate
    return replace(gate, threshold=math.copysign(f.value, gate.threshold), source="noise", runs=f.runs)


def machine_warnings(base_records: list[dict], new_records: list[dict],
                     labels: tuple[str, str] = ("base", "new")) -> list[str]:
    """Returns one line per pair of differing machine fingerprints, naming the fields that differ."""
    from quantbench.track.history import differences, machines_of

    mb, mn = machines_of(base_records), machines_of(new_records)
    if not mb or not mn or set(mb) == set(mn):
        return []
    out = []
    for fb, b in mb.items():
        for fn, n in mn.items():
            if fb != fn:
                out.append(f"{labels[0]} ran on machine {fb}, {labels[1]} on {fn}: "
                           + ", ".join(differences(b, n)))
    return out


def fallback_twin(rec, new_ok: set) -> str:
    """Returns the format that measured this crashed record's workload on the safer kernel path
    (runner: crash -> `<format>+path-<safer>`), '' when there is none: then the crash is a failure."""
    from quantbench.core.formats import PATH_SUFFIX, SAFER_PATH

    if not isinstance(rec, dict) or not rec.get("crash_signal") or rec.get("backend") not in SAFER_PATH:
        return ""
    twin = f"{rec['format']}{PATH_SUFFIX}{SAFER_PATH[rec['backend']]}"
    return twin if (rec["model"], twin, rec["device"], rec["workload"]) in new_ok else ""


def _additive(versions: set) -> bool:
    """Returns whether records of these schema versions compare field by field: the newest only
    added fields to the others (records.SCHEMA_ADDITIVE)."""
    try:
        newest = max(int(v) for v in versions)
    except (TypeError, ValueError):
        return False
    return all(int(v) == newest or int(v) in records.SCHEMA_ADDITIVE.get(newest, ()) for v in versions)


def compare(base_records: list[dict], new_records: list[dict], fail: list[str] | None = None,
            alpha: float = ALPHA, labels: tuple[str, str] = ("base", "new"),
            strict_machine: bool = False, history_dir=None) -> CompareResult:
    """Returns the CompareResult of new against base under the default gates overridden by `fail`.

    With history_dir, a default gate is raised to the noise floor its series shows there
    (floors_from_history); each row's `gate` says what it was judged against.
    Raises UserError when strict_machine and the two sides ran on different machines.
    """
    import pandas as pd

    gates = gates_for(fail)
    floors = floors_from_history(history_dir) if history_dir is not None else None
    warnings = machine_warnings(base_records, new_records, labels)
    if warnings and strict_machine:
        raise UserError(f"--strict-machine: {warnings[0]}; compare runs of one machine or drop "
                        "--strict-machine")
    base, new = _frame(base_records), _frame(new_records)
    vb = sorted(map(str, set(base.schema_version)))
    vn = sorted(map(str, set(new.schema_version)))
    if vb and vn and vb != vn and not _additive(set(base.schema_version) | set(new.schema_version)):
        raise UserError(f"schema mismatch: {labels[0]} has schema_version {', '.join(vb)} but "
                        f"{labels[1]} has {', '.join(vn)}; re-run the older one with this quantbench")
    joined = base.merge(new, on=list(records.IDENTITY), how="outer", suffixes=("_b", "_n"),
                        indicator="side")
    if not (joined["side"] == "both").any():
        raise UserError(f"nothing to join: {labels[0]} ({len(base)} records) and {labels[1]} "
                        f"({len(new)} records) share no (model, format, device, workload)")
    rows, regressions, notes, skipped = [], [], [], {}
    new_ok = {records.key(r) for r in new_records if r.get("status") == "ok"}
    for j in joined.itertuples(index=False):
        if j.status_b != "ok":  # nothing to hold new to (also keys only in new)
            continue
        k = f"{j.model}/{j.format}/{j.device}/{j.workload}"
        where = f"format {j.format} workload {j.workload} ({j.model}, {j.device})"
        status = j.status_n if j.side == "both" else "missing"
        twin = fallback_twin(j.rec_n, new_ok) if status == "failed" else None
        if twin:  # the engine crashed on this machine's default path; the safer path measured it
            notes.append(f"{where}: the engine crashed ({j.rec_n.get('crash_signal')} in "
                         f"{j.rec_n.get('kernel') or 'its default path'}); measured as {twin} instead "
                         "(a kernel fallback, not a regression; suite key kernel_fallback = false makes "
                         "it fail)")
            rows.append({"key": k, "metric": "status", "base": "ok", "new": f"crashed → {twin}",
                         "gate": "", "verdict": "ok"})
            continue
        if status != "ok":  # failed, skipped (a lost dependency is lost coverage) or missing
            why = "" if status == "missing" else f": {j.reason_n or 'no reason given'}"
            regressions.append(f"{where}: ok in base, {status} in new{why}")
            rows.append({"key": k, "metric": "status", "base": "ok", "new": status, "gate": "",
                         "verdict": "REGRESSION"})
            continue
        for name in METRICS:
            row = judge(name, gate_for(name, gates, floors, j.rec_n), j.rec_b, j.rec_n, alpha)
            if row is not None:
                rows.append({"key": k, **row})
                if row["verdict"] == SKIPPED:
                    skipped.setdefault((name, row["n_samples"]), []).append(k)
                elif row["verdict"] == "REGRESSION":
                    regressions.append(f"{where}: {row['message']}")
                elif row["verdict"] == "noisy":
                    notes.append(f"{where}: {row['message']}: not significant at alpha "
                                 f"{alpha:g}, not called")
    for (name, (n1, n2)), keys in skipped.items():
        notes.append(f"{name} gate on {len(keys)} key(s) {SKIPPED}: with {n1} vs {n2} samples the "
                     f"smallest possible p is {min_p(n1, n2):.2g} >= alpha {alpha:g}, so it cannot "
                     "fire; keep more samples (suite min_samples) to gate it")
    table = pd.DataFrame(rows, columns=COLUMNS + ["message", "n_samples"])
    table = table.drop(columns=["message", "n_samples"])
    table = table.sort_values("verdict", key=lambda v: v.map(VERDICT_ORDER), kind="stable")
    return CompareResult(table.reset_index(drop=True), regressions, notes, warnings)


def from_pytest_benchmark(doc: dict) -> list[dict]:
    """Returns one record per benchmark of a pytest-benchmark JSON (raw rounds from --benchmark-save-data)."""
    names = [b["name"] for b in doc["benchmarks"]]
    commit = (doc.get("commit_info") or {}).get("id", "")
    return [{"schema_version": "pytest-benchmark", "model": "harness", "device": "cpu",
             "format": b["name"] if names.count(b["name"]) == 1 else b["fullname"],  # unique
             "workload": "perf", "status": "ok", "reason": "", "env": {"git_commit": commit},
             "perf_s": b.get("stats", {}).get("median"),
             "perf_samples_s": b.get("stats", {}).get("data") or b.get("data") or []}
            for b in doc["benchmarks"]]


def load(path: str) -> list[dict]:
    """Returns the records of a quantbench JSONL file or a pytest-benchmark JSON file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"compare: '{path}' not found (or not a file); pass two results files")
    try:
        doc = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None  # JSONL (several objects), or not text: records.read names the problem
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return from_pytest_benchmark(doc)
    return records.read(p)
