"""Measurements on a loaded backend: prefill, per-step decode, and quality on fixed windows.

Timing (after gpt-fast and llama-bench): an untimed warm-up, device sync around every timed
region, each decode step timed on its own, raw samples kept, and a time budget so a slow kernel
stops early once it has its minimum samples (the record says how many it timed). With a precision
goal (suite `ci_target`), sampling goes on until the median's 95 % confidence interval is that
narrow: the sample count is decided by the noise, not by a fixed time.
"""
from __future__ import annotations

import math
import time

import numpy as np

from quantbench.backends import Backend

CI_LEVEL = 0.95


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int] | None:
    """Returns the 0-based ranks (lo, hi) of the sorted samples bounding a distribution-free CI of
    the median, or None when n is too small for one (n < 6 at 95 %).

    The order-statistic interval (Conover, *Practical Nonparametric Statistics*, 3rd ed., §3.2):
    the number of samples below the median is Binomial(n, ½), so [x_(k), x_(n−1−k)] covers it with
    probability 1 − 2·P(Bin ≤ k); k is the largest rank keeping that ≥ level.
    `median_ci_ranks(20) == (5, 14)`: P(Bin(20, ½) ≤ 5) = 0.0207.
    """
    alpha = (1 - level) / 2
    log_half, cdf, k = n * math.log(0.5), 0.0, -1
    for j in range(n // 2 + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_half)
        if cdf > alpha:
            break
        k = j
    # k: the largest j with P(Bin <= j) <= alpha; the interval is [x_(k+1), x_(n-k)] 1-based
    return None if k < 0 else (k, n - 1 - k)


def median_ci(samples) -> tuple[float, float] | None:
    """Returns the median's 95 % CI (lower, upper) from the sorted samples (median_ci_ranks); None
    with too few samples."""
    ranks = median_ci_ranks(len(samples))
    if ranks is None:
        return None
    a = np.sort(np.asarray(samples, float))
    return float(a[ranks[0]]), float(a[ranks[1]])


def median_ci_rel(samples_s) -> float | None:
    """Returns the half-width of the median's 95 % CI relative to the median: the larger of
    (median − lower) and (upper − median), over the median; None with too few samples."""
    ci, med = median_ci(samples_s), float(np.median(samples_s)) if len(samples_s) else 0.0
    if ci is None or med <= 0:
        return None
    return max(med - ci[0], ci[1] - med) / med


class Stopper:
    """Decides when a timing has enough samples: at least `min_samples`; then, with ci_target > 0,
    until the median's CI is within ±ci_target or a cap is hit (`max_samples`, or `budget_s` of
    timed seconds: untimed work such as a depth's fill is not charged); with ci_target = 0, the
    budget alone cuts it short. `why` names what stopped it: ci, min_samples, max_samples, budget."""

    def __init__(self, min_samples: int, budget_s: float, ci_target: float = 0.0, max_samples: int = 0):
        self.min_samples, self.budget_s, self.ci_target = min_samples, budget_s, ci_target
        self.max_samples = max(max_samples, min_samples) if ci_target > 0 else 0
        self.timed_s, self.why = 0.0, ""

    def over_budget(self) -> bool:
        return self.timed_s > self.budget_s

    def done(self, samples: list[float], reps: int | None = None) -> bool:
        """Returns whether to stop after these samples (`reps`: whole repetitions finished, the unit
        min_samples counts when a repetition holds several samples; None: one sample each)."""
        got = len(samples) if reps is None else reps
        if self.over_budget() and len(samples) >= self.min_samples:
            self.why = "budget"
        elif got < self.min_samples:
            return False
        elif self.ci_target <= 0:
            self.why = "min_samples"
        elif self.max_samples and len(samples) >= self.max_samples:
            self.why = "max_samples"
        elif (ci := median_ci_rel(samples)) is not None and ci <= self.ci_target:
            self.why = "ci"
        else:
            return False
        return True


def _precision(kind: str, samples: list[float], stop: Stopper) -> dict:
    """Returns the fields saying how precise a timing is: samples timed, the CI reached, why it stopped."""
    return {f"{kind}_ci95_rel": median_ci_rel(samples), f"{kind}_stop": stop.why or "budget",
            f"{kind}_timed_s": stop.timed_s, "ci_target": stop.ci_target}



def _percentiles(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s)
    return {f"decode_p{q}_s": float(np.percentile(a, q)) for q in (50, 90, 99)}


def time_prefill(b: Backend, ids: list[int], min_samples: int, budget_s: float,
                 fill: list[int] = (), ci_target: float = 0.0, max_samples: int = 0) -> dict:
    """Returns prefill_tok_s (median), ttft_s and the raw prefill_samples_s for a prompt; with
    `fill`, each sample first caches those tokens untimed and times the prompt on top of them.
    Samples are taken until `Stopper` says so; the fill's time is not charged to the budget."""
    b.prefill(ids[: min(len(ids), 32)])  # warm-up on a short prompt: slow kernels stay affordable
    b.sync()
    samples, engine, stop = [], [], Stopper(min_samples, budget_s, ci_target, max_samples)
    while True:
        if fill:
            b.prefill(list(fill))
            b.sync()
        e0, t0 = b.engine_s(), time.perf_counter()
        b.extend(ids) if fill else b.prefill(ids)
        b.sync()
        samples.append(time.perf_counter() - t0)
        stop.timed_s += samples[-1]
        if e0 is not None:
            engine.append(b.engine_s() - e0)
        if stop.done(samples) or (stop.over_budget() and samples):
            break
    med = float(np.median(samples))
    return {"n_prompt": len(ids), "depth": len(fill), "prefill_tok_s": len(ids) / med, "ttft_s": med,
            "prefill_samples_s": samples, "prefill_timed": len(samples),
            **_precision("prefill", samples, stop), **_engine_fields("prefill", samples, engine)}


def _engine_fields(kind: str, wall_s: list[float], engine_s: list[float]) -> dict:
    """Returns the engine's own time per timed step beside the wall clock's: engine_<kind>_s (median),
    harness_<kind>_s (median of wall - engine per step: what the harness adds), the raw samples."""
    if not engine_s:
        return {}
    over = np.asarray(wall_s) - np.asarray(engine_s)
    return {f"engine_{kind}_s": float(np.median(engine_s)), f"harness_{kind}_s": float(np.median(over)),
            f"engine_{kind}_samples_s": [float(x) for x in engine_s]}


class EnergyMeter:
    """A GPU's energy counter (NVML's total energy since the driver loaded, mJ), read around timed
    regions, and its idle draw, so that energy per token is net of what the card burns anyway.

    `reason` says why there is no meter (no NVML, a card without the counter: pre-Volta, some
    virtualised GPUs); then every read is None and records say energy was skipped and why.
    """

    IDLE_S = 1.0  # how long the idle draw is sampled, the card synced and quiet

    def __init__(self, device: str):
        self.handle, self.reason, self.idle_w = None, "", None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int(device.split(":")[1]) if ":" in device else 0
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3
            self._read()
        except Exception as e:  # ImportError, NVMLError_NotSupported, ...
            self.handle, self.reason = None, f"NVML energy counter unavailable: {type(e).__name__}: {e}"[:200]

    def read(self) -> float | None:
        """Returns the counter in joules (None without a meter)."""
        return self._read() if self.handle is not None else None

    def measure_idle(self) -> float | None:
        """Returns (and keeps) the card's idle draw in watts over IDLE_S of doing nothing."""
        if self.handle is None:
            return None
        e0, t0 = self.read(), time.perf_counter()
        time.sleep(self.IDLE_S)
        self.idle_w = (self.read() - e0) / (time.perf_counter() - t0)
        return self.idle_w


def energy_fields(kind: str, joules: float, seconds: float, tokens: int, meter: EnergyMeter) -> dict:
    """Returns <kind>_energy_j_per_tok (net of the idle draw over the same seconds), the gross
    figure, the mean power and the idle draw it was netted against."""
    if meter.handle is None:
        return {"energy_reason": meter.reason}
    if not tokens or seconds <= 0:
        return {"energy_reason": "no timed tokens"}
    idle = meter.idle_w or 0.0
    return {f"{kind}_energy_j_per_tok": (joules - idle * seconds) / tokens,
            f"{kind}_energy_gross_j_per_tok": joules / tokens, f"{kind}_power_w": joules / seconds,
            "gpu_idle_w": idle, "energy_source": "NVML nvmlDeviceGetTotalEnergyConsumption"}


def time_decode(b: Backend, prompt: list[int], n_gen: int, min_samples: int,
                budget_s: float, batch: int = 1, fill: list[int] = (), energy: EnergyMeter | None = None,
                ci_target: float = 0.0, max_samples: int = 0) -> dict:
    """Returns decode_tok_s = batch / median step time, latency percentiles and raw step samples.

    Repetitions of prompt + n_gen steps: at least `min_samples` of them (the budget cuts one short
    once at least `min_samples` steps are timed); with ci_target > 0, more until the median step's
    95 % CI is within ±ci_target (checked after each repetition, so every context length of the
    sweep point counts alike) or `max_samples` steps or the budget is reached. With batch > 1,
    `batch` copies of the prompt are decoded together: a step's latency is every sequence's
    per-token latency. With `fill`, each repetition first caches those tokens untimed (the depth),
    then times prompt and steps on top; only the timed regions are charged to the budget.
    """
    prefill = b.prefill if batch == 1 else (lambda ids: b.prefill_batch(ids, batch))
    extend = b.extend if batch == 1 else (lambda ids: b.extend_batch(ids, batch))
    decode = b.decode if batch == 1 else b.decode_batch
    tok = prefill(prompt)
    for _ in range(2):
        tok = decode(tok)
    b.sync()
    steps, engine, ttfts = [], [], []
    stop = Stopper(min_samples, budget_s, ci_target, max_samples)
    joules, region_s = 0.0, 0.0  # energy over the decode steps only (the counter read around them)
    reps = 0
    while True:
        if fill:
            prefill(list(fill))
            b.sync()
        t0 = time.perf_counter()
        tok = extend(prompt) if fill else prefill(prompt)
        b.sync()
        ttfts.append(time.perf_counter() - t0)
        stop.timed_s += ttfts[-1]
        j0, r0 = (energy.read(), time.perf_counter()) if energy else (None, 0.0)
        for _ in range(n_gen - 1):
            e0, t0 = b.engine_s(), time.perf_counter()
            tok = decode(tok)
            b.sync()
            steps.append(time.perf_counter() - t0)
            stop.timed_s += steps[-1]
            if e0 is not None:
                engine.append(b.engine_s() - e0)
            if stop.over_budget() and len(steps) >= min_samples:
                break
            if stop.max_samples and len(steps) >= stop.max_samples:
                break
        if j0 is not None:
            joules += energy.read() - j0
            region_s += time.perf_counter() - r0
        reps += 1
        if stop.done(steps, reps) or (stop.over_budget() and steps):
            break
    out = {"n_prompt": len(prompt), "n_gen": n_gen, "batch": batch, "depth": len(fill),
           "ttft_s": float(np.median(ttfts)), "decode_tok_s": batch / float(np.median(steps)),
           "decode_samples_s": steps, "decode_tokens_timed": len(steps) * batch,
           "decode_steps_timed": len(steps), "decode_repetitions": reps,
           **_precision("decode", steps, stop), **_percentiles(steps), **_engine_fields("decode", steps, engine)}
    if energy is not None:
        out.update(energy_fields("decode", joules, region_s, len(steps) * batch, energy))
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Returns log-probabilities of float32 logits [T, V], computed stably in float32 by torch (on
    the worker's threads: 3x numpy's single-threaded exp on a 512 x 49152 window here)."""
    import torch

    return torch.log_softmax(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), -1).numpy()


def scored_positions(n_ctx: int) -> range:
    """Returns the logit positions llama.cpp's perplexity scores: n_ctx/2 .. n_ctx-2."""
    return range(n_ctx // 2, n_ctx - 1)


def _ppl(nll_sum: float, nll: np.ndarray) -> tuple[float, float]:
    """Returns (ppl, stderr): exp(mean NLL) and ppl x std(NLL)/sqrt(N), as llama.cpp prints."""
    mean = nll_sum / len(nll)
    return float(np.exp(mean)), float(np.exp(mean) * nll.std(ddof=1) / np.sqrt(len(nll)))


def score_windows(b: Backend, windows: list[list[int]], budget_s: float,
                  reference: np.ndarray | None = None, kld_tokens: int = 0,
                  write_reference: np.ndarray | None = None) -> dict:
    """Returns ppl (second-half), ppl_full, per-window NLL sums and KLD stats against `reference`.

    `reference`: float16 log-probs [kld_tokens, V] of the reference format at the first scored
    positions; `write_reference`: an array of that shape this call fills (the reference run).
    Windows are scored in order until the time budget is spent (at least one); a variant that ran
    out of budget is marked `ppl_partial` and is compared with others on common windows only.
    """
    n_ctx = len(windows[0])
    pos = np.asarray(scored_positions(n_ctx))
    half_nll, full_nll, w_half, w_full = [], [], [], []
    kld, same_top, dp = [], [], []
    limit = kld_tokens if reference is None else min(kld_tokens, len(reference))
    filled, start = 0, time.perf_counter()
    for w in windows:
        lp = log_softmax(b.logits(w).astype(np.float32))
        target = np.asarray(w[1:])
        nll = -lp[np.arange(n_ctx - 1), target]
        full_nll.append(nll)
        half_nll.append(nll[pos])
        w_half.append(float(nll[pos].sum()))
        w_full.append(float(nll.sum()))
        take = min(len(pos), limit - filled)
        if take > 0:
            rows = lp[pos[:take]]
            if write_reference is not None:
                write_reference[filled:filled + take] = rows
            if reference is not None:
                # renormalize: fp16 rounding leaves sum(p) != 1, which can push KL below 0
                ref = log_softmax(reference[filled:filled + take].astype(np.float32))
                p_ref = np.exp(ref)
                kld.append((p_ref * (ref - rows)).sum(axis=-1))
                same_top.append(ref.argmax(-1) == rows.argmax(-1))
                tgt = target[pos[:take]]
                idx = np.arange(take)
                dp.append(np.exp(rows[idx, tgt]) - p_ref[idx, tgt])
            filled += take
        if time.perf_counter() - start > budget_s:
            break
    half, full = np.concatenate(half_nll), np.concatenate(full_nll)
    ppl, ppl_err = _ppl(float(half.sum()), half)
    ppl_full, ppl_full_err = _ppl(float(full.sum()), full)
    out = {"n_ctx": n_ctx, "ppl": ppl, "ppl_stderr": ppl_err, "ppl_full": ppl_full,
           "ppl_full_stderr": ppl_full_err, "ppl_windows": len(w_half), "window_nll": w_half,
           "ppl_windows_asked": len(windows), "ppl_partial": len(w_half) < len(windows),
           "window_tokens": len(pos), "window_nll_full": w_full, "ppl_tokens": int(len(half)),
           "reference_rows": filled}
    if kld:
        k = np.concatenate(kld)
        out.update(kld_mean=float(k.mean()), kld_p99=float(np.percentile(k, 99)),
                   top1_agree=float(np.concatenate(same_top).mean()),
                   rms_dp=float(np.sqrt(np.mean(np.concatenate(dp) ** 2))), kld_tokens=int(len(k)))
    return out
