"""A real run of all 11 formats on `tiny` (the CI suite): nothing outruns its roofline.

A speed-of-light fraction above 1 means the roofline's inputs are wrong: a calibration that read
low, a compute peak that is not what the kernel computes with (GGUF prefill once read 62-148 ×
its roofline), or FLOPs the backend never does. The only excuse is a calibration taken beside
other work on a shared machine, and then the record must say so.
"""
import pytest

from quantbench.core import records
from quantbench.core.suite import load_suite
from quantbench.measure import runner

pytestmark = pytest.mark.slow

SOL = ("prefill_sol_frac", "decode_sol_frac", "decode_sol_frac_spec")


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, tiny):
    # The CI suite's formats and build settings (so GPTQ/AWQ artifacts are shared with the CI run),
    # fewer quality windows: only the speed workloads carry a SoL.
    suite = load_suite("suites/ci.toml").with_overrides(ppl_windows=1, min_samples=3, time_budget_s=2.0)
    out = tmp_path_factory.mktemp("sol") / "ci.jsonl"
    runner.run(suite, out)
    return records.read(out)


def test_every_format_ran_and_carries_its_roofline(ci_run):
    ok = [r for r in ci_run if r["status"] == "ok"]
    assert {r["format"] for r in ok} == set(load_suite("suites/ci.toml").formats)
    timed = [r for r in ok if r["workload"].startswith(("pp", "tg")) and not r["workload"].startswith("ppl")]
    assert timed and all(r["peaks"]["threads"] == r["threads"] for r in timed)
    assert all(r.get("prefill_sol_frac") or r.get("decode_sol_frac") for r in timed)


def test_no_sol_above_one(ci_run):
    over = [(r["format"], r["workload"], k, round(r[k], 2)) for r in ci_run for k in SOL
            if (r.get(k) or 0) > 1]
    for r in ci_run:
        if any((r.get(k) or 0) > 1 for k in SOL):
            assert r["sol_suspect"] and r["sol_suspect_reason"]  # never unflagged
    peaks = next(r["peaks"] for r in ci_run if r.get("peaks"))
    if not peaks["suspect"]:  # a quiet calibration: no excuse
        assert over == []
