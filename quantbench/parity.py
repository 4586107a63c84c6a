"""Parity with the engines' own benchmarks on the same machine, files, threads and windows.

- GGUF formats against llama-bench (pp, tg) and llama-perplexity (ppl, KLD against the F16 file),
  both built once from the installed llama-cpp-python's source distribution and run on the
  wheel's own shared libraries (LD_LIBRARY_PATH), so the engine under test is the same binary code.
- transformers formats against a bare greedy loop in plain torch (quantbench/measure/bare_loop.py), in a
  fresh process like quantbench's worker.
- Rounds are interleaved, quantbench then the engine's tool, A/B/A/B; each side's figure is the
  median over its rounds. Ratios are quantbench / reference (≥ 0.97 is parity for speed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.core import cache
from quantbench.core.errors import UserError
from quantbench.report.tables import Cell, Head, Para, Row, Section, Table, table_markdown

TOOLS = ("llama-bench", "llama-perplexity")
BUILD_ETA_S = 5 * 60  # the tools' compile: 3.5 min on this 2-core machine (ggml, llama, common, two tools)
SPEED_TARGET = 0.97  # quantbench / engine tok/s
# Above this the two sides did not time the same work (a harness cannot outrun the engine it
# drives): the row is flagged and the table names where their kernel paths differ.
SPEED_MAX = 1.03
PPL_TARGET = 0.005  # |ppl / llama-perplexity − 1|
KLD_TARGET = 0.10  # |kld / llama-perplexity's − 1|


def wheel_lib_dir() -> Path:
    """Returns the directory of the installed llama-cpp-python's shared libraries (libllama.so ...)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError("llama_cpp not installed; install quantbench[gguf] (nox -s parity installs "
                        "it from the wheelhouse)") from None
    return Path(llama_cpp.__file__).parent / "lib"


def _cuda_wheel() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def tools_dir(version: str, say=print) -> Path:
    """Returns a directory with bin/llama-bench and bin/llama-perplexity built from llama-cpp-python
    `version`'s sdist (CUDA when the installed wheel has GPU offload), compiling them the first time."""
    flavour = "cuda" if _cuda_wheel() else "cpu"
    final = cache.entry("llama-tools", f"{version}-{flavour}")
    if cache.verified(final) and all((final / "bin" / t).exists() for t in TOOLS):
        return final
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise UserError(f"building llama-bench needs '{tool}' on PATH; install it (apt install "
                            "cmake g++), or skip the llama.cpp half of parity")
    eta = time.strftime("%H:%M", time.localtime(time.time() + BUILD_ETA_S))
    say(f"[parity] compiling llama-bench and llama-perplexity from llama-cpp-python {version} "
        f"({flavour}) once into {final}: ~{BUILD_ETA_S // 60} min on 2 cores, done about {eta}")
    t0 = time.perf_counter()
    with cache.atomic_dir(final) as tmp:
        src = _sdist_tree(version, tmp)
        build = tmp / "build"
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_SKIP_BUILD_RPATH=ON",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"]
        if flavour == "cuda":
            flags.append("-DGGML_CUDA=on")
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        log = tmp / "build.log"
        with log.open("w") as f:
            for cmd in (["cmake", "-S", str(src), "-B", str(build), *gen, *flags],
                        ["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(os.cpu_count() or 2)]):
                if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    raise UserError(f"building llama.cpp's tools failed ({' '.join(cmd[:3])}); "
                                    "last lines:\n" + "\n".join(tail))
        (tmp / "bin").mkdir()
        for t in TOOLS:
            shutil.copy2(build / "bin" / t, tmp / "bin" / t)
        (tmp / "lib").mkdir()
        for so in (build / "bin").glob("*.so*"):  # what the wheel lacks (llama-common, the tools'
            shutil.copy2(so, tmp / "lib" / so.name)  # -impl libraries); the wheel's own come first
        shutil.rmtree(build)
        shutil.rmtree(src)
    say(f"[parity] llama.cpp tools built in {(time.perf_counter() - t0) / 60:.1f} min")
    return final


def _sdist_tree(version: str, into: Path) -> Path:
    """Returns vendor/llama.cpp of llama-cpp-python `version`'s sdist, unpacked under `into`."""
    from quantbench.backends.gguf import download_sdist

    sdist = download_sdist(version, into, "or skip the llama.cpp half of parity")
    with tarfile.open(sdist) as tf:
        root = tf.getnames()[0].split("/")[0]
        keep = [m for m in tf.getmembers() if m.name.startswith(f"{root}/vendor/llama.cpp/")]
        tf.extractall(into, members=keep, filter="data")
    sdist.unlink()
    return into / root / "vendor" / "llama.cpp"


def tool_env(tools: Path | None, suite) -> dict:
    """Returns the environment the references run in: OMP_WAIT_POLICY as the suite sets it for
    quantbench's workers; for llama.cpp's tools the wheel's libraries first, then the build's own."""
    env = suite.omp_env(dict(os.environ))
    if tools is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(wheel_lib_dir()), str(tools / "lib"), os.environ.get("LD_LIBRARY_PATH", "")])
    return env


@dataclass(frozen=True)
class BenchRun:
    """One llama-bench invocation's settings, as quantbench's suite has them."""
    model: str
    threads: int
    n_prompt: int
    n_gen: int
    reps: int = 5
    n_gpu_layers: int = 0
    repack: bool = True  # llama.cpp's extra buffer types (AMX, CPU_REPACK): the harness's kernel path

    def argv(self, tools: Path) -> list[str]:
        return [str(tools / "bin" / "llama-bench"), "-m", self.model, "-t", str(self.threads),
                "-p", str(self.n_prompt), "-n", str(self.n_gen), "-fa", "1", "-r", str(self.reps),
                "-ngl", str(self.n_gpu_layers), "--repack", str(int(self.repack)), "-o", "json"]


def repacks(rec: dict) -> bool:
    """Returns whether the harness variant ran with llama.cpp's extra buffer types on (its
    kernel_detail says; records older than that field ran the default, on)."""
    return (rec.get("kernel_detail") or {}).get("extra_bufts", True) is not False


def parse_llama_bench(text: str) -> dict[str, dict]:
    """Returns {"pp512": {tok_s, samples_ts, ...}, "tg64": {...}} from llama-bench's `-o json` output:
    tok_s is the median of its per-repetition samples_ts (quantbench's figures are medians too)."""
    start = text.find("[")
    try:
        rows = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError as e:
        raise ValueError(f"llama-bench printed no JSON array ({e}): {text[:200]!r}") from None
    if not isinstance(rows, list):
        raise ValueError(f"llama-bench printed no JSON array: {text[:200]!r}")
    out = {}
    for r in rows:
        name = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        if r.get("n_depth"):
            name += f"@d{r['n_depth']}"
        samples = [float(x) for x in r.get("samples_ts") or [r["avg_ts"]]]
        out[name] = {"tok_s": float(np.median(samples)), "samples_ts": samples,
                     "threads": int(r["n_threads"]), "model_filename": r.get("model_filename", ""),
                     "build_commit": r.get("build_commit", ""), "path": bench_path(r)}
    return out


# The settings that pick llama.cpp's kernels and the work timed, as both sides can state them:
# extra buffer types (repack: AMX / CPU_REPACK weights), threads, the micro-batch a prompt is split
# into (pp only: a tg step is one token), flash attention, the cache depth before the timed region.
PATH_KEYS = ("repack", "threads", "ubatch", "fa", "depth", "kv")


def path_text(path: dict) -> str:
    """Returns 'repack=1 threads=2 ubatch=512 fa=1 depth=0 kv=f16' (keys in PATH_KEYS order)."""
    return " ".join(f"{k}={path[k]}" for k in PATH_KEYS if path.get(k) is not None)


def bench_path(row: dict) -> dict:
    """Returns the kernel path of one llama-bench JSON row (its own report of its settings)."""
    pp = row.get("n_gen", 0) == 0
    ub = min(int(row["n_ubatch"]), int(row["n_batch"]), int(row["n_prompt"])) if pp and "n_ubatch" in row else None
    return {"repack": int(bool(row["repack"])) if "repack" in row else None, "threads": row.get("n_threads"),
            "ubatch": ub, "fa": int(row["flash_attn"]) if "flash_attn" in row else None,
            "depth": row.get("n_depth", 0), "kv": row.get("type_k")}


def harness_path(rec: dict) -> dict:
    """Returns the kernel path of one quantbench GGUF record, in bench_path's keys (None: not recorded)."""
    from quantbench.core.suite import Workload

    w, kd = Workload.parse(rec["workload"]), rec.get("kernel_detail") or {}
    ub = min(int(kd["n_ubatch"]), int(kd.get("n_batch", kd["n_ubatch"])), w.tokens) \
        if w.kind == "pp" and kd.get("n_ubatch") else None
    fa = kd.get("flash_attn")
    return {"repack": int(repacks(rec)), "threads": rec.get("threads"), "ubatch": ub,
            "fa": None if fa is None else int(bool(fa)), "depth": w.depth, "kv": rec.get("kv_type")}


def path_diff(a: str, b: str) -> str:
    """Returns where two path_text strings differ ('repack 0 vs 1, threads 2 vs 4'); keys one side
    does not state are not compared."""
    da = dict(kv.split("=", 1) for kv in a.split())
    db = dict(kv.split("=", 1) for kv in b.split())
    return ", ".join(f"{k} {da[k]} vs {db[k]}" for k in PATH_KEYS if k in da and k in db and da[k] != db[k])


def run_llama_bench(tools: Path, run: BenchRun, env: dict) -> dict[str, dict]:
    r = subprocess.run(run.argv(tools), capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"llama-bench failed on {run.model}: {r.stderr.strip()[-400:]}")
    return parse_llama_bench(r.stdout)


FINAL_PPL = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")
MEAN_PPL_Q = re.compile(r"Mean PPL\(Q\)\s*:\s*([\d.]+)\s*±\s*([\d.]+)")
MEAN_KLD = re.compile(r"Mean\s+KLD:\s*([\d.eE+-]+)\s*±\s*([\d.eE+-]+)")
SAME_TOP = re.compile(r"Same top p:\s*([\d.]+)\s*±")
CHUNKS = re.compile(r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+)")


def parse_llama_perplexity(text: str) -> dict:
    """Returns {ppl, ppl_stderr, chunks, n_ctx[, kld_mean, top1_agree]} from llama-perplexity's log."""
    out = {}
    if m := CHUNKS.search(text):
        out.update(chunks=int(m[1]), n_ctx=int(m[2]))
    if m := FINAL_PPL.search(text) or MEAN_PPL_Q.search(text):
        out.update(ppl=float(m[1]), ppl_stderr=float(m[2]))
    if m := MEAN_KLD.search(text):
        out["kld_mean"] = float(m[1])
    if m := SAME_TOP.search(text):
        out["top1_agree"] = float(m[1]) / 100
    if "ppl" not in out:
        raise ValueError(f"no perplexity in llama-perplexity's output: {text.strip()[-300:]!r}")
    return out


def run_llama_perplexity(tools: Path, model: str, text_file: Path, n_ctx: int, chunks: int, threads: int,
                         env: dict, kld_base: Path | None = None, write_base: bool = False,
                         repack: bool = True) -> dict:
    """Runs llama-perplexity on `text_file` (n_ctx windows, `chunks` of them, flash attention as
    quantbench's backend has it); with kld_base, writes (write_base) or compares against F16 logits."""
    argv = [str(tools / "bin" / "llama-perplexity"), "-m", model, "-f", str(text_file), "-c", str(n_ctx),
            "-b", str(n_ctx), "--chunks", str(chunks), "-t", str(threads), "-fa", "on", "-ngl", "0"]
    argv += [] if repack else ["--no-repack"]  # the harness variant's kernel path
    if kld_base is not None:
        argv += ["--kl-divergence-base", str(kld_base)] + ([] if write_base else ["--kl-divergence"])
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"llama-perplexity failed on {model}: {(r.stderr or r.stdout).strip()[-400:]}")
    return parse_llama_perplexity(r.stdout + r.stderr)


# -- the table: one Measure per figure, side and round; medians over rounds; ratio and verdict --

@dataclass(frozen=True)
class Measure:
    """One figure of one side in one round: side is quantbench, engine (quantbench's own record of
    the engine's time: what the harness would read with no harness cost) or reference (the tool)."""
    format: str
    metric: str  # pp512, tg64, ppl, kld
    side: str
    round: int
    value: float
    tool: str = ""  # the reference's name: llama-bench, llama-perplexity, bare torch loop
    path: str = ""  # the kernel path it ran on (path_text), where the side states it


def _target(metric: str) -> tuple[str, callable]:
    if metric in ("ppl", "kld"):
        tol = PPL_TARGET if metric == "ppl" else KLD_TARGET
        return f"within {tol:.1%}", lambda ratio: abs(ratio - 1) <= tol
    return f"{SPEED_TARGET}–{SPEED_MAX}", lambda ratio: SPEED_TARGET <= ratio <= SPEED_MAX


def quantbench_measures(recs: list[dict], round_: int) -> list[Measure]:
    """Returns the figures of quantbench's ok records that parity compares: pp<N> and tg<N> at batch
    1, depth 0 (speed, and the engine's own time beside it), ppl and KLD."""
    from quantbench.core.suite import Workload

    out = []
    for r in recs:
        if r.get("status") != "ok":
            continue
        w, f = Workload.parse(r["workload"]), r["format"]
        if w.batch > 1 or w.depth:
            continue
        path = path_text(harness_path(r)) if r.get("backend") == "gguf" else ""
        if w.kind == "pp" and r.get("prefill_tok_s"):
            out.append(Measure(f, f"pp{w.tokens}", "quantbench", round_, r["prefill_tok_s"], path=path))
            if r.get("engine_prefill_s"):
                out.append(Measure(f, f"pp{w.tokens}", "engine", round_, w.tokens / r["engine_prefill_s"]))
        elif w.kind == "tg" and r.get("decode_tok_s"):
            out.append(Measure(f, f"tg{w.tokens}", "quantbench", round_, r["decode_tok_s"], path=path))
            if per_run := _per_run_tok_s(r.get("decode_samples_s") or [], w.tokens - 1):
                out.append(Measure(f, f"tg{w.tokens}", "per_run", round_, per_run))
            if r.get("engine_decode_s"):
                out.append(Measure(f, f"tg{w.tokens}", "engine", round_, 1 / r["engine_decode_s"]))
        elif w.kind == "ppl" and r.get("ppl"):
            out.append(Measure(f, "ppl", "quantbench", round_, r["ppl"]))
            if r.get("kld_reference") not in (None, f) and r.get("kld_mean") is not None:
                out.append(Measure(f, "kld", "quantbench", round_, r["kld_mean"]))
    return out


def _per_run_tok_s(steps_s: list[float], steps_per_run: int) -> float | None:
    """Returns llama-bench's estimator from quantbench's raw steps: each repetition's steps / its total
    time, median over repetitions (quantbench's own figure is 1 / the median step: a few slow steps
    lower a mean rate, not a median one)."""
    runs = [steps_s[i:i + steps_per_run] for i in range(0, len(steps_s), steps_per_run)]
    rates = [len(r) / sum(r) for r in runs if r and sum(r) > 0]
    return float(np.median(rates)) if rates else None


def _round_ratios(df, side: str) -> dict:
    """Returns {(format, metric): [side / reference in the same round, one per round]}."""
    p = df.pivot_table(index=["format", "metric", "round"], columns="side", values="value", aggfunc="median")
    if side not in p or "reference" not in p:
        return {}
    return {k: list(g) for k, g in (p[side] / p["reference"]).dropna().groupby(level=["format", "metric"])}


def _paired(df, side: str):
    """Returns {(format, metric): median over rounds of side / reference in the same round}."""
    return {k: float(np.median(v)) for k, v in _round_ratios(df, side).items()}


def ratio_ci(ratios: list[float]) -> tuple[float, float] | None:
    """Returns the 95 % CI of the median of the per-round ratios (order statistics, as a sweep
    point's: measure.timing.median_ci), or None under 6 rounds. On a VM whose engine reads 10-35 %
    apart from one process to the next, 7 rounds bound the median only by the extreme rounds; 9
    drop one from each end."""
    from quantbench.measure.timing import median_ci

    return median_ci(ratios)


def verdict(metric: str, ratio: float, ci: tuple[float, float] | None) -> str:
    """Returns 'ok' (the ratio meets the target), 'MISS' (it does not, and its CI, where there is one,
    does not reach the target either: the sides differ) or 'within noise' (a speed ratio off target
    whose CI reaches it: the rounds cannot tell; run more)."""
    if ratio == ratio and _target(metric)[1](ratio):
        return "ok"
    if ci is not None and ci[0] <= SPEED_MAX and ci[1] >= SPEED_TARGET:  # only speed rows have a CI
        return "within noise"
    return "MISS"


def parity_table(measures: list[Measure]):
    """Returns a DataFrame, one row per (format, metric): the median of each side over its rounds,
    ratio = the median over rounds of quantbench / reference in the same round (neighbours in time, so
    the machine's drift between rounds cancels), ratio_per_run the same for llama-bench's estimator,
    the rounds both sides ran, the target and whether the ratio meets it; for speed, ratio_ci (the 95 %
    CI of that median over rounds, ratio_ci) and the verdict it allows (verdict)."""
    import pandas as pd

    df = pd.DataFrame([m.__dict__ for m in measures])
    if df.empty:
        return df
    med = df.pivot_table(index=["format", "metric"], columns="side", values="value", aggfunc="median")
    n = df.pivot_table(index=["format", "metric"], columns="side", values="round", aggfunc="nunique")
    tools = df[df.side == "reference"].groupby(["format", "metric"])["tool"].first()
    if "path" not in df:
        df["path"] = ""
    paths = {side: df[df.side == side].groupby(["format", "metric"])["path"].first()
             for side in ("quantbench", "reference")}
    paired, paired_runs = _paired(df, "quantbench"), _paired(df, "per_run")
    per_round = _round_ratios(df, "quantbench")
    rows = []
    for (fmt, metric), r in med.iterrows():
        ref, qb = r.get("reference"), r.get("quantbench")
        if pd.isna(ref) or pd.isna(qb):
            continue
        target = _target(metric)[0]
        ratio = paired.get((fmt, metric), float("nan"))
        ci = ratio_ci(per_round.get((fmt, metric), [])) if metric not in ("ppl", "kld") else None
        v = verdict(metric, ratio, ci)
        qp, rp = (paths[side].get((fmt, metric)) or "" for side in ("quantbench", "reference"))
        diff = path_diff(qp, rp)
        note = ""
        if metric not in ("ppl", "kld") and ratio == ratio:
            if ratio > SPEED_MAX:
                note = (f"faster than the engine's own benchmark: paths differ in {diff}" if diff else
                        "faster than the engine's own benchmark on the same stated path: unexplained")
            elif diff:
                note = f"paths differ in {diff}"
        rows.append({"format": fmt, "metric": metric, "tool": tools.get((fmt, metric), ""),
                     "quantbench_path": qp, "reference_path": rp, "note": note,
                     "quantbench": qb, "engine": r.get("engine"), "per_run": r.get("per_run"),
                     "reference": ref, "ratio": ratio, "ratio_per_run": paired_runs.get((fmt, metric)),
                     "target": target, "ok": v == "ok", "ratio_ci": ci, "verdict": v,
                     "rounds": int(min(n.loc[(fmt, metric)].get("quantbench", 0),
                                       n.loc[(fmt, metric)].get("reference", 0)))})
    return pd.DataFrame(rows)


def _num(v: float, metric: str) -> str:
    if v is None or v != v:
        return "—"
    if metric == "kld":
        return f"{v:.5f}"
    return f"{v:.4f}" if metric == "ppl" else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


PARITY_HEAD = (Head("format"), Head("metric"), Head("reference"), Head("quantbench", right=True),
               Head("engine only⁵", right=True), Head("reference value", right=True), Head("ratio⁶", right=True),
               Head("95 % CI⁹"), Head("target"), Head(""), Head("per-run rate⁷", right=True),
               Head("its ratio", right=True),
               Head("quantbench path⁸"), Head("reference path⁸"), Head("note"))
PARITY_TITLE = "Parity with the engines' own benchmarks"


def _ci_text(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if isinstance(ci, tuple) else "—"


def parity_rows(t) -> Table:
    """Returns the parity table, one row per (format, metric) of parity_table's DataFrame; a missed
    target is bold. The report, the markdown file and the terminal all show these rows."""
    def ratio(v):
        return "—" if v is None or v != v else f"{v:.3f}"

    rows = tuple(Row(tuple(Cell(x) for x in (
        r.format, r.metric, r.tool, _num(r.quantbench, r.metric), _num(r.engine, r.metric),
        _num(r.reference, r.metric), ratio(r.ratio), _ci_text(r.ratio_ci), r.target))
        + (Cell(r.verdict, bold=r.verdict == "MISS"),
        Cell(_num(r.per_run, r.metric)), Cell(ratio(r.ratio_per_run)),
        Cell(getattr(r, "quantbench_path", "") or "—"), Cell(getattr(r, "reference_path", "") or "—"),
        Cell(getattr(r, "note", "") or ""))) for r in t.itertuples())
    return Table(PARITY_HEAD, rows)


def parity_markdown(t) -> str:
    """Returns the parity table as markdown (the parity report and docs/results.md show it)."""
    return table_markdown(parity_rows(t)) + "\n"


def parity_section(t) -> Section:
    """Returns the report's parity section: the table and its notes."""
    return Section(PARITY_TITLE, (parity_rows(t), Para(PARITY_NOTE, "foot")))


PARITY_NOTE = ("⁵ quantbench's record of the engine's own time (llama.cpp's perf counters, the wall "
               "time inside model.forward): what quantbench would report with no harness cost. Speed "
               "is tok/s, medians over rounds run A/B/A/B (quantbench, then the reference); ppl and "
               "KLD from the first round, on the same text, n_ctx and number of windows. "
               "⁶ median over rounds of quantbench / reference within a round. "
               "⁷ llama-bench's estimator applied to quantbench's raw decode steps: steps / total time "
               "of each repetition (a mean rate), median over repetitions; quantbench itself reports "
               "1 / the median step. ⁸ the kernel path each side ran: llama.cpp's extra buffer types "
               "(repack), threads, the micro-batch a prompt is split into (pp), flash attention, the "
               "cache depth before the timed region and the KV type, from quantbench's record and "
               "llama-bench's own JSON; a ratio above 1.03 is flagged with where they differ. "
               "⁹ the 95 % CI of the median ratio over rounds (order statistics; 6 rounds or more): a "
               "ratio off target whose CI reaches the target reads 'within noise', the rounds cannot "
               "tell it from parity; MISS, they can.")


# -- the driver: `quantbench parity` (nox -s parity) --

def _qb_run(suite_path: str, out: Path, sets: list[str], say) -> list[dict]:
    from quantbench.core import records

    cmd = [sys.executable, "-m", "quantbench", "run", "--suite", suite_path, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    say(f"[parity] quantbench: {' '.join(cmd[2:])}")
    if subprocess.run(cmd).returncode:
        raise UserError(f"quantbench run failed for the parity suite; see its output above ({out})")
    return records.read(out)


def _bare_loop(model_dir: str, fmt, device: str, threads: int, suite, env: dict) -> dict:
    cmd = [sys.executable, "-m", "quantbench.measure.bare_loop", model_dir, fmt.param, device, str(threads),
           str(max(suite.prompt_lengths)), str(suite.gen_tokens), str(suite.min_samples),
           str(suite.gen_prompt_tokens)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"the bare torch loop failed for {fmt.name}: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(suite_path: str, rounds: int, out_dir: str, say=print) -> tuple:
    """Runs the parity check; returns (table DataFrame, quantbench's round-1 results files). Rounds
    alternate quantbench and the references (A/B/A/B). GGUF formats meet llama-bench and
    llama-perplexity, transformers formats (fp32, bf16, fp16 without compile) a bare torch loop."""
    from quantbench.backends.gguf import _version
    from quantbench.core.formats import get_format
    from quantbench.core.suite import load_suite
    from quantbench.inputs.corpus import load_text
    from quantbench.inputs.models import resolve

    suite = load_suite(suite_path)
    if rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {rounds}")
    fmts = [get_format(f) for f in suite.formats]
    unsupported = [f.name for f in fmts if f.backend not in ("gguf", "hf") or f.compiled or f.kv_type]
    if unsupported:
        raise UserError(f"parity compares gguf-* formats with llama.cpp's tools and fp32/bf16/fp16 with "
                        f"a bare torch loop; drop {', '.join(unsupported)} from {suite_path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gguf = any(f.backend == "gguf" for f in fmts)
    tools = tools_dir(_version(), say) if gguf and wheel_lib_dir() else None
    env = tool_env(tools, suite)
    model = resolve(suite.model)
    measures: list[Measure] = []
    groups = {b: [f for f in fmts if f.backend == b] for b in ("gguf", "hf")}
    groups = {b: fs for b, fs in groups.items() if fs}  # one quantbench run each: gguf-f16 is then the
    first: list[Path] = []                              # GGUF files' KLD reference, as llama-perplexity's
    for rnd in range(1, rounds + 1):
        for backend, group in groups.items():
            path = out / f"quantbench-r{rnd}-{backend}.jsonl"
            # quality once: later rounds score a single window (they time, not judge)
            sets = [f"formats={json.dumps([f.name for f in group])}"] + ([] if rnd == 1 else ["ppl_windows=1"])
            recs = _qb_run(suite_path, path, sets, say)
            first += [path] if rnd == 1 else []
            got_qb = quantbench_measures(recs, rnd)
            measures += got_qb if rnd == 1 else [m for m in got_qb if m.metric not in ("ppl", "kld")]
            measures += _references(group, recs, rnd, rounds, tools, model.dir, suite, env, say)
            if rnd == 1 and backend == "gguf":
                measures += _perplexity(tools, suite, recs, load_text(suite.corpus), out, env, say)
    (out / "measures.jsonl").write_text("".join(json.dumps(m.__dict__) + "\n" for m in measures))
    return parity_table(measures), first


def _references(group, recs: list[dict], rnd: int, rounds: int, tools: Path | None, model_dir: str, suite,
                env: dict, say) -> list[Measure]:
    """The reference side of one round: llama-bench on each GGUF file quantbench ran, the bare torch
    loop for each transformers format, on the threads quantbench used."""
    n_prompt, n_gen = max(suite.prompt_lengths), suite.gen_tokens
    by_fmt = {r["format"]: r for r in recs if r.get("status") == "ok" and r["workload"] == "load"}
    measures = []
    for f in group:
        rec = by_fmt.get(f.name)
        if rec is None:
            say(f"[parity] {f.name}: no ok record from quantbench; skipped")
            continue
        threads = int(rec["threads"])
        tool = "llama-bench" if f.backend == "gguf" else "bare torch loop"
        path = f" on {rec.get('kernel') or 'the default path'} (--repack {int(repacks(rec))})" \
            if f.backend == "gguf" else ""
        say(f"[parity] round {rnd}/{rounds}: {tool} {f.name} pp{n_prompt} tg{n_gen}, {threads} threads{path}")
        if f.backend == "gguf":
            got = run_llama_bench(tools, BenchRun(rec["artifact"], threads, n_prompt, n_gen, suite.min_samples,
                                                  repack=repacks(rec)), env)
            tool = f"llama-bench --repack {int(repacks(rec))}"
            measures += [Measure(f.name, k, "reference", rnd, v["tok_s"], tool, path_text(v["path"]))
                         for k, v in got.items()]
        else:
            got = _bare_loop(model_dir, f, rec["device"], threads, suite, env)
            measures += [Measure(f.name, f"pp{n_prompt}", "reference", rnd, got["prefill_tok_s"], tool),
                         Measure(f.name, f"tg{n_gen}", "reference", rnd, got["decode_tok_s"], tool)]
    return measures


def _perplexity(tools: Path, suite, recs: list[dict], text: str, out: Path, env: dict, say) -> list[Measure]:
    """llama-perplexity on every GGUF of the run, on the corpus text quantbench tokenized: F16 first,
    saving its logits as the KLD base, then each other file against it."""
    text_file = out / "corpus.txt"
    text_file.write_text(text, encoding="utf-8")
    files = {r["format"]: (r["artifact"], int(r["threads"]), repacks(r)) for r in recs
             if r.get("status") == "ok" and r["workload"] == "load" and r.get("backend") == "gguf"}
    base = out / "f16.kld" if "gguf-f16" in files else None
    order = sorted(files, key=lambda f: f != "gguf-f16")
    measures = []
    for f in order:
        path, threads, repack = files[f]
        say(f"[parity] llama-perplexity {f}: {suite.ppl_windows} chunks of {suite.n_ctx}"
            + ("" if repack else ", --no-repack (the harness variant's path)"))
        got = run_llama_perplexity(tools, path, text_file, suite.n_ctx, suite.ppl_windows, threads, env,
                                   kld_base=base, write_base=f == "gguf-f16", repack=repack)
        measures.append(Measure(f, "ppl", "reference", 1, got["ppl"], "llama-perplexity"))
        if "kld_mean" in got and f != "gguf-f16":
            measures.append(Measure(f, "kld", "reference", 1, got["kld_mean"], "llama-perplexity"))
    if base is not None:
        base.unlink(missing_ok=True)  # F16 logits of every window: hundreds of MB
    return measures
