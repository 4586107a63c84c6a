"""The spine end to end on the tiny model: transformers + bitsandbytes formats, crash, resume."""
import math
import os

import pytest

from quantbench.core import records
from quantbench.core.suite import Suite, Workload
from quantbench.measure import runner

TINY = Suite(name="t", model="tiny", formats=("bf16", "fp32", "fp16", "bnb-int8", "bnb-nf4"),
             prompt_lengths=(32,), gen_tokens=8, min_samples=3, time_budget_s=2.0, n_ctx=64,
             ppl_windows=3, quality_budget_s=60.0, kld_tokens=64)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("run") / "r.jsonl"
    runner.run(TINY, out)
    return {(r["format"], r["workload"]): r for r in records.read(out)}


def test_plan_puts_the_reference_first():
    assert [f for _, f in runner.plan(TINY)] == ["fp32", "bf16", "fp16", "bnb-int8", "bnb-nf4"]
    assert [str(w) for w in TINY.workloads()] == ["load", "pp32", "tg8", "ppl64"]


def test_every_variant_and_workload_ok(tiny_run):
    assert len(tiny_run) == 5 * 4
    bad = {k: r["reason"] for k, r in tiny_run.items() if r["status"] != "ok"}
    assert not bad


def test_records_carry_schema_and_env(tiny_run):
    r = tiny_run[("bf16", "tg8")]
    assert set(records.IDENTITY) <= set(r) and r["suite_hash"] == TINY.suite_hash
    assert r["env"]["torch"] and r["threads"] >= 1
    # the machine's load rides on every measured workload (core.load): a share of all CPUs, in %
    assert r["load_avg_1m"] >= 0 and 0 <= r["others_busy_pct"] <= 100
    assert r["n_gen"] == 8 and len(r["decode_samples_s"]) == r["decode_tokens_timed"] >= 3
    assert r["decode_p50_s"] <= r["decode_p90_s"] <= r["decode_p99_s"]
    assert math.isclose(r["decode_tok_s"], 1 / r["decode_p50_s"], rel_tol=1e-9)
    pp = tiny_run[("bf16", "pp32")]
    assert pp["n_prompt"] == 32 and len(pp["prefill_samples_s"]) >= 1 and pp["prefill_tok_s"] > 0


def test_kv_cache_bytes_are_exact(tiny_run):
    # tiny: 2 layers x 3 KV heads x head_dim 64; K and V; 64-token context.
    per_token = 2 * 2 * 3 * 64
    assert tiny_run[("fp32", "load")]["kv_cache_bytes"] == per_token * 4 * 64
    assert tiny_run[("bf16", "load")]["kv_cache_bytes"] == per_token * 2 * 64
    assert tiny_run[("fp16", "pp32")]["kv_cache_bytes"] == per_token * 2 * 32


def test_weights_bytes_follow_the_dtype(tiny_run):
    fp32 = tiny_run[("fp32", "load")]["weights_bytes"]
    # parameters halve; the two fp32 rotary buffers (inv_freq, original_inv_freq: 256 B) stay.
    assert fp32 - 2 * tiny_run[("bf16", "load")]["weights_bytes"] == -256
    # int8/nf4 quantize only the decoder linears; the 28M-parameter embedding stays 16/32-bit.
    assert tiny_run[("bnb-nf4", "load")]["weights_bytes"] < tiny_run[("bf16", "load")]["weights_bytes"]


def test_peak_rss_is_each_variants_own(tiny_run):
    rss = {f: tiny_run[(f, "load")]["peak_rss_bytes"] for f in ("fp32", "bf16", "bnb-nf4")}
    for f, v in rss.items():
        assert v > tiny_run[(f, "load")]["weights_bytes"], f
    # fp32 holds 70 MB more weights than bf16; an inherited high-water mark would make them equal
    assert rss["fp32"] - rss["bf16"] > 50e6


def test_quality_same_windows_and_kld(tiny_run):
    ref = tiny_run[("fp32", "ppl64")]
    assert ref["kld_reference"] == "fp32" and ref["kld_mean"] == 0.0 and ref["ppl_windows"] == 3
    assert ref["ppl_tokens"] == 3 * 31  # positions 32..62 of each 64-token window
    for fmt in ("bf16", "fp16", "bnb-int8", "bnb-nf4"):
        r = tiny_run[(fmt, "ppl64")]
        assert r["kld_reference"] == "fp32" and r["kld_tokens"] == 64
        assert math.isclose(r["ppl"], ref["ppl"], rel_tol=0.2), fmt
    # fp16 holds the checkpoint's own values: nearly no divergence; nf4 diverges most.
    assert abs(tiny_run[("fp16", "ppl64")]["kld_mean"]) < 1e-3
    assert tiny_run[("bnb-nf4", "ppl64")]["kld_mean"] > tiny_run[("bf16", "ppl64")]["kld_mean"]
    assert tiny_run[("bnb-nf4", "ppl64")]["top1_agree"] < 1.0


def test_crash_leaves_failed_record_and_keeps_others(tmp_path, tiny, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.setenv("QUANTBENCH_DUMMY_CRASH", "9")
    suite = TINY.with_overrides(formats=["fp32", "dummy"], ppl_windows=1)
    runner.run(suite, out)
    got = {(r["format"], r["workload"]): r for r in records.read(out)}
    assert all(got[("fp32", w)]["status"] == "ok" for w in [str(w) for w in suite.workloads()])
    dummy = [got[("dummy", w)] for w in [str(w) for w in suite.workloads()]]
    assert all(r["status"] == "failed" and "SIGKILL" in r["reason"] for r in dummy)


def test_engine_time_beside_wall_time(tiny_run):
    """Every HF step's time inside model.forward is recorded beside its wall time, and is part of it."""
    for fmt in ("bf16", "fp32", "bnb-int8"):
        tg, pp = tiny_run[(fmt, "tg8")], tiny_run[(fmt, "pp32")]
        assert len(tg["engine_decode_samples_s"]) == len(tg["decode_samples_s"])
        assert all(0 < e <= w for e, w in zip(tg["engine_decode_samples_s"], tg["decode_samples_s"], strict=True))
        assert 0 < tg["engine_decode_s"] <= tg["decode_p99_s"] and tg["harness_decode_s"] >= 0
        assert all(0 < e <= w for e, w in zip(pp["engine_prefill_samples_s"], pp["prefill_samples_s"],
                                               strict=True))
        assert tg["omp_wait_policy"] == "default"  # TINY leaves the suite key at its default


def test_omp_wait_policy_reaches_the_worker(tmp_path, tiny, monkeypatch):
    """The suite key, not the caller's environment, sets the worker's OMP_WAIT_POLICY."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    out = tmp_path / "r.jsonl"
    runner.run(TINY.with_overrides(formats=["dummy"], ppl_windows=1, omp_wait_policy="passive"), out)
    assert {r["omp_wait_policy"] for r in records.read(out) if r["status"] == "ok"} == {"passive"}
    runner.run(TINY.with_overrides(formats=["dummy"], ppl_windows=1), out)
    assert {r["omp_wait_policy"] for r in records.read(out) if r["status"] == "ok"} == {"default"}


def test_resume_skips_finished_and_new_run_rotates(tmp_path, tiny, capsys):
    out = tmp_path / "r.jsonl"
    suite = TINY.with_overrides(formats=["dummy"], ppl_windows=1)
    runner.run(suite, out)
    n = len(records.read(out))
    runner.run(suite, out, resume=True)
    assert len(records.read(out)) == n and "skipped (--resume)" in capsys.readouterr().out
    runner.run(suite, out)  # without --resume: the old file moves to previous/
    assert len(records.read(out)) == n and len(list((tmp_path / "previous").iterdir())) == 1


def test_predicted_beside_measured(tiny_run):
    for fmt in ("fp32", "bf16", "fp16", "bnb-int8", "bnb-nf4"):
        load = tiny_run[(fmt, "load")]
        assert load["kv_cache_bytes"] == load["kv_cache_bytes_predicted"], fmt
        assert math.isclose(load["weights_bytes"], load["weights_bytes_predicted"], rel_tol=0.02), fmt
        tg = tiny_run[(fmt, "tg8")]
        assert tg["decode_sol_frac"] == tg["decode_tok_s"] / tg["decode_tok_s_predicted"]
        assert tg["bound"] in ("memory", "compute")


BUILD_SCRIPT = """
import logging, os, sys
from pathlib import Path
from quantbench.measure import worker
from quantbench.backends import say

def noisy():
    print("progress bar 10%")                      # Python-level, through sys.stdout
    os.write(2, b"llama.cpp chatter\\n")           # C-level, straight to fd 2
    logging.getLogger("lib").addHandler(logging.StreamHandler())  # bound to sys.stderr now
    say("[quantbench] quantizing ...")              # meant for the console
    return 1.5

log = worker.build_log("[gptq-4b/cpu]")
assert worker.logged(noisy, log, "[gptq-4b/cpu]") == 1.5
logging.getLogger("lib").warning("after the block")  # the handler still works: no Logging error
print("log:", log)

def broken():
    print("step 1 of 2")
    raise RuntimeError("kernel exploded")

try:
    worker.logged(broken, log, "[awq-4b/cpu]")
except RuntimeError:
    print("raised")
"""


def test_build_output_goes_to_a_log(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", BUILD_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "QUANTBENCH_CACHE": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr
    log = next((tmp_path / "logs").glob("gptq-4b-cpu-*.log"))
    assert r.stdout.splitlines() == ["[quantbench] quantizing ...", f"log: {log}", "raised"]
    assert log.read_text().startswith("progress bar 10%\nllama.cpp chatter\n")
    assert "after the block" in r.stderr and "Logging error" not in r.stderr + log.read_text()
    # the failure prints the log's tail to the console
    assert f"[awq-4b/cpu] last lines of {log}:" in r.stderr and "step 1 of 2" in r.stderr


def test_decode_twin_against_the_datasheet(tmp_path):
    # A CUDA device whose GPU is in the devices table carries peaks_spec: tg records then hold
    # a second roofline from the datasheet bandwidth, and the fraction of it they reached.
    import dataclasses

    import numpy as np

    from quantbench.arith import hardware, sol
    from quantbench.arith.shapes import shape_from_config
    from quantbench.backends.dummy import DummyBackend
    from quantbench.core.formats import get_format
    from quantbench.core.variant import Variant
    from quantbench.measure import worker

    suite = Suite(model="dummy", formats=("dummy",), gen_tokens=8, gen_prompt_tokens=4,
                  min_samples=2, time_budget_s=1.0)
    calibrated = hardware.Peaks("local", {"fp32": 1e15}, 1e12, 8e10, "measured")
    spec = dataclasses.replace(calibrated, name="datasheet", bandwidth_bytes_s=4e12, source="spec")
    v = Variant("m", "", "", get_format("dummy"), "cpu", 1, suite, base={"peaks_spec": dataclasses.asdict(spec)},
                peaks=dataclasses.asdict(calibrated))
    data = {"prompt": np.arange(1, 40)}
    b = DummyBackend(v)
    b.load()
    shape = shape_from_config("shape:smollm2-135m")
    out = worker.run_workload(v, b, Workload.parse("tg8"), data, shape)
    # memory-bound decode: the datasheet's 4x bandwidth predicts 4x the tok/s
    assert out["decode_tok_s_predicted_spec"] == pytest.approx(4 * out["decode_tok_s_predicted"], rel=0.02)
    frac = out["decode_tok_s"] / out["decode_tok_s_predicted_spec"]
    assert sol.sol_fields(out)["decode_sol_frac_spec"] == pytest.approx(frac)
    v = dataclasses.replace(v, base={})
    assert "decode_tok_s_predicted_spec" not in worker.run_workload(v, b, Workload.parse("tg8"), data, shape)


def test_batched_decode_beside_batch_one(tmp_path, tiny):
    out = tmp_path / "r.jsonl"
    suite = TINY.with_overrides(formats=["fp32", "fp32+compiled", "gguf-f16"], decode_batches=[4],
                                ppl_windows=1)
    assert [str(w) for w in suite.workloads()] == ["load", "pp32", "tg8", "tg8x4", "ppl64"]
    runner.run(suite, out)
    got = {(r["format"], r["workload"]): r for r in records.read(out)}
    for fmt in ("fp32", "gguf-f16"):
        one, four = got[(fmt, "tg8")], got[(fmt, "tg8x4")]
        assert one["status"] == four["status"] == "ok", four.get("reason")
        assert (one["batch"], four["batch"]) == (1, 4)
        # tok/s counts every sequence: 4 per step; each sample is one step's latency
        assert math.isclose(four["decode_tok_s"], 4 / four["decode_p50_s"], rel_tol=1e-9)
        assert four["decode_tokens_timed"] == 4 * len(four["decode_samples_s"])
        # the arithmetic holds 4 sequences' KV and, memory-bound, predicts ~4x the tokens per second
        assert four["kv_cache_bytes_predicted"] == 4 * one["kv_cache_bytes_predicted"]
        assert four["decode_tok_s_predicted"] > 2 * one["decode_tok_s_predicted"]
    # transformers holds exactly 4 sequences of 2 x 2 x 3 x 64 fp32 values per token
    assert got[("fp32", "tg8x4")]["kv_cache_bytes"] % (4 * 2 * 2 * 3 * 64 * 4) == 0
    # a +compiled twin (static cache for one sequence) runs batch 1 only; nothing is left skipped
    assert ("fp32+compiled", "tg8x4") not in got and got[("fp32+compiled", "tg8")]["status"] == "ok"
    assert all(r["status"] == "ok" for r in got.values())
