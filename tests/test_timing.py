"""Timing by precision: the median's order-statistic CI and the sampler that stops on it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from quantbench.measure import timing


def test_median_ci_ranks_are_the_binomial_ones():
    # P(Bin(20, 1/2) <= 5) = 21700 / 2^20 = 0.0207 <= 0.025 < P(<= 6) = 0.0577: ranks 5 and 14
    assert sum(math.comb(20, j) for j in range(6)) / 2**20 == pytest.approx(0.0207, abs=1e-4)
    assert timing.median_ci_ranks(20) == (5, 14)
    assert timing.median_ci_ranks(5) is None  # 2 / 32 = 0.0625 > 0.05: no 95 % interval
    assert timing.median_ci_ranks(6) == (0, 5)  # 2 / 64 = 0.031
    # large n: the normal approximation n/2 - 1.96 sqrt(n)/2 - 1/2 (Conover) within one rank
    lo, hi = timing.median_ci_ranks(400)
    assert abs(lo - (200 - 1.96 * 10 - 0.5)) <= 1 and hi == 399 - lo


def test_median_ci_rel_reads_the_ranks():
    x = [1.0] * 5 + [2.0] * 10 + [4.0] * 5  # sorted ranks 5..14 are all 2.0: the CI is [2, 2]
    assert timing.median_ci_rel(x) == 0.0
    y = list(range(1, 21))  # median 10.5, ranks 5 and 14 hold 6 and 15
    assert timing.median_ci_rel(y) == pytest.approx(4.5 / 10.5)
    assert timing.median_ci_rel([1.0, 2.0, 3.0]) is None


class Clock:
    """A fake perf_counter the fake backend advances: steps cost `step_s` × lognormal noise, the
    fill at depth costs `fill_s` (untimed)."""

    def __init__(self, step_s, noise, fill_s=0.0, seed=0):
        self.t, self.step_s, self.noise, self.fill_s = 0.0, step_s, noise, fill_s
        self.rng = np.random.default_rng(seed)

    def __call__(self):
        return self.t


class FakeBackend:
    def __init__(self, clock, fill_len=0):
        self.c, self.fill_len, self.fills = clock, fill_len, 0

    def _step(self):
        self.c.t += self.c.step_s * float(np.exp(self.c.noise * self.c.rng.standard_normal()))
        return 1

    def prefill(self, ids):
        if self.fill_len and len(ids) == self.fill_len:
            self.fills += 1
            self.c.t += self.c.fill_s
            return 1
        return self._step()

    def extend(self, ids):
        return self._step()

    def decode(self, tok):
        return self._step()

    def sync(self):
        pass

    def engine_s(self):
        return None


@pytest.fixture
def clock(monkeypatch):
    def make(*a, **kw):
        c = Clock(*a, **kw)
        monkeypatch.setattr(timing.time, "perf_counter", c)
        return c
    return make


def test_fixed_repetitions_without_a_target(clock):
    b = FakeBackend(clock(0.01, 0.05))
    out = timing.time_decode(b, [1, 2], 9, min_samples=3, budget_s=100.0)
    assert (out["decode_repetitions"], out["decode_steps_timed"], out["decode_stop"]) == (3, 24, "min_samples")
    assert out["decode_tokens_timed"] == 24 and out["ci_target"] == 0.0


def test_sampling_stops_when_the_median_is_precise(clock):
    b = FakeBackend(clock(0.01, 0.10))
    out = timing.time_decode(b, [1, 2], 9, min_samples=1, budget_s=100.0, ci_target=0.03, max_samples=5000)
    assert out["decode_stop"] == "ci" and out["decode_ci95_rel"] <= 0.03
    # 10 % noise needs ~ (1.96 · 1.25 · 0.10 / 0.03)^2 ≈ 68 steps for ±3 %; whole repetitions of 8
    assert 24 <= out["decode_steps_timed"] <= 200 and out["decode_steps_timed"] % 8 == 0
    assert out["decode_tok_s"] == pytest.approx(100, rel=0.05)
    b = FakeBackend(clock(0.01, 0.10))  # a tighter target takes more samples
    tight = timing.time_decode(b, [1, 2], 9, 1, 100.0, ci_target=0.01, max_samples=5000)
    assert tight["decode_steps_timed"] > 3 * out["decode_steps_timed"]


def test_caps_end_a_noisy_timing(clock):
    b = FakeBackend(clock(0.01, 1.0))
    out = timing.time_decode(b, [1, 2], 9, 1, 100.0, ci_target=0.03, max_samples=50)
    assert out["decode_stop"] == "max_samples" and out["decode_steps_timed"] == 50
    assert out["decode_ci95_rel"] > 0.03
    b = FakeBackend(clock(0.01, 1.0))
    out = timing.time_decode(b, [1, 2], 9, 1, 0.5, ci_target=0.03, max_samples=5000)
    assert out["decode_stop"] == "budget" and 0.5 < out["decode_timed_s"] < 0.5 + 0.3


def test_the_fill_is_not_charged_to_the_budget(clock):
    # each repetition's untimed fill costs 10 s, the budget is 3 s: the timed work still decides
    c = clock(0.01, 0.10, fill_s=10.0)
    b = FakeBackend(c, fill_len=64)
    out = timing.time_decode(b, [1, 2], 9, 1, 3.0, fill=list(range(64)), ci_target=0.03, max_samples=5000)
    assert out["decode_stop"] == "ci" and out["decode_repetitions"] == b.fills >= 3
    assert out["decode_timed_s"] < 3.0 < 10 * b.fills < c.t
    b = FakeBackend(clock(0.01, 0.10, fill_s=10.0), fill_len=64)
    pp = timing.time_prefill(b, [1, 2, 3], 1, 3.0, fill=list(range(64)), ci_target=0.03, max_samples=5000)
    assert pp["prefill_stop"] == "ci" and pp["prefill_timed"] == b.fills >= 6
    assert pp["prefill_ci95_rel"] <= 0.03


def test_suite_keys_of_the_precision_goal():
    from quantbench.core.errors import UserError
    from quantbench.core.suite import Suite, load_suite

    assert Suite().ci_target == 0.0  # default: fixed repetitions, as before
    assert load_suite("suites/arith-cpu.toml").ci_target == 0.03
    assert load_suite("suites/parity.toml").ci_target == 0  # llama-bench's -r: the same work both sides
    with pytest.raises(UserError, match="ci_target must be a fraction"):
        Suite(ci_target=3.0)
    with pytest.raises(UserError, match="max_samples .* must be >= min_samples"):
        Suite(ci_target=0.03, min_samples=10, max_samples=5)
