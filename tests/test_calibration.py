"""Trustworthy roofline inputs: calibration at the run's thread count, never cached when taken
beside other work, re-checked by a probe, and every SoL above 1 flagged."""
import json
import subprocess
import sys
import time

import pytest

from quantbench.arith import hardware, sol
from quantbench.arith.hardware import GiB, Peaks
from quantbench.measure import runner


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """A machine whose copies and GEMMs run at 10 GB/s and 100 GFLOP/s per torch thread, with a
    scripted share of CPU time used by other processes (one value per calibration)."""
    import torch

    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "RETRY_WAIT_S", 0.0, raising=False)
    seen = {"threads": [], "busy": [0.0]}

    def copy(torch_, device, n_bytes, budget_s, sync):
        seen["threads"].append(torch.get_num_threads())
        return 10e9 * torch.get_num_threads()

    def gemm(torch_, dtype, device, n_max, budget_s, sync):
        return 100e9 * torch.get_num_threads()

    def busy(self):
        return seen["busy"].pop(0) if len(seen["busy"]) > 1 else seen["busy"][0]

    monkeypatch.setattr(hardware, "_copy_bytes_s", copy)
    monkeypatch.setattr(hardware, "_gemm_flop_s", gemm)
    # raising=False: the thread-count test must reach its assertions on code without these
    if hasattr(hardware, "_Load"):
        monkeypatch.setattr(hardware._Load, "others_busy_pct", busy)
    monkeypatch.setattr(hardware, "probe", lambda device="cpu", threads=0: {
        "bandwidth_bytes_s": 10e9 * threads, "fp32_flop_s": 100e9 * threads, "others_busy_pct": 0.0},
        raising=False)
    return seen


def test_peaks_are_calibrated_at_the_variants_thread_count(fake_machine, tmp_path):
    # Today's runner calibrated at torch's default thread count whatever the suite said: a
    # 1-thread run was held against a 2-thread roofline.
    import torch

    default = torch.get_num_threads()
    one, two = runner._peaks("cpu", 1), runner._peaks("cpu", 2)
    assert fake_machine["threads"] == [1, 2]  # the copies ran at the asked thread counts
    assert (one["threads"], one["bandwidth_bytes_s"], one["flop_s"]["fp32"]) == (1, 10e9, 100e9)
    assert (two["threads"], two["bandwidth_bytes_s"], two["flop_s"]["bf16"]) == (2, 20e9, 200e9)
    assert torch.get_num_threads() == default  # the caller's thread count is restored
    names = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "cache" / "calibration").iterdir())
    assert names == ["1t.json", "2t.json"]  # cached per thread count
    assert runner._peaks("cpu", 1) == one and fake_machine["threads"] == [1, 2]  # from the cache


def test_busy_calibration_is_retried_then_used_but_never_cached(fake_machine, tmp_path):
    fake_machine["busy"] = [35.0, 42.0]
    p = hardware.local_peaks("cpu", threads=1)
    assert len(fake_machine["threads"]) == hardware.CALIBRATION_TRIES == 2
    assert p.others_busy_pct == 42.0 and "other processes used 42% of the CPUs" in p.suspect
    assert not (tmp_path / "cache" / "calibration").exists()
    fake_machine["busy"] = [3.0]  # quiet now: this one is cached and trusted
    q = hardware.local_peaks("cpu", threads=1)
    assert q.suspect == "" and q.others_busy_pct == 3.0 and q.load_avg_1m is not None
    assert len(list((tmp_path / "cache" / "calibration").iterdir())) == 1


def test_busy_then_quiet_retry_is_cached(fake_machine, tmp_path):
    fake_machine["busy"] = [60.0, 1.0]
    p = hardware.local_peaks("cpu", threads=1)
    assert p.suspect == "" and len(fake_machine["threads"]) == 2
    cached = json.loads(next((tmp_path / "cache" / "calibration").iterdir()).read_text())
    assert cached["peaks"]["others_busy_pct"] == 1.0 and cached["probe"]["bandwidth_bytes_s"] == 10e9


def test_drift_judges_the_probe_against_the_calibrations():
    at_cal = {"bandwidth_bytes_s": 7.53e9, "fp32_flop_s": 100e9, "others_busy_pct": 0.0}
    quiet = {"bandwidth_bytes_s": 46e9, "fp32_flop_s": 100e9, "others_busy_pct": 2.0}
    # the stale cache: 7.53 GB/s calibrated beside a compiler, 46 GB/s on a quiet probe
    assert hardware.drift(at_cal, quiet) == ("copy bandwidth probes 6.11x faster than when "
                                             "calibrated (the cache reads low)")
    assert hardware.drift(quiet, {**quiet, "bandwidth_bytes_s": 50e9}) == ""  # 1.09x: holds
    slower = {**quiet, "fp32_flop_s": 50e9}
    assert "0.50x slower on a quiet machine" in hardware.drift(quiet, slower)
    # slower while others work: this run is loaded, the quiet cache still holds
    assert hardware.drift(quiet, {**slower, "others_busy_pct": 55.0}) == ""


def test_drifted_cache_is_recalibrated(fake_machine, tmp_path, monkeypatch):
    hardware.local_peaks("cpu", threads=1)
    path = next((tmp_path / "cache" / "calibration").iterdir())
    entry = json.loads(path.read_text())
    entry["peaks"]["bandwidth_bytes_s"] = entry["probe"]["bandwidth_bytes_s"] = 7.53e9  # stale
    path.write_text(json.dumps(entry))
    assert hardware.local_peaks("cpu", threads=1).bandwidth_bytes_s == 10e9  # recalibrated
    assert len(fake_machine["threads"]) == 2
    assert json.loads(path.read_text())["peaks"]["bandwidth_bytes_s"] == 10e9


def test_busy_recalibration_keeps_the_higher_figures(fake_machine, tmp_path):
    hardware.local_peaks("cpu", threads=1)
    path = next((tmp_path / "cache" / "calibration").iterdir())
    entry = json.loads(path.read_text())
    entry["peaks"]["flop_s"]["int8"] = 900e9  # the cache saw a faster int8 GEMM than now
    entry["probe"]["bandwidth_bytes_s"] = 5e9  # and a probe that now reads 2x faster
    path.write_text(json.dumps(entry))
    fake_machine["busy"] = [50.0]
    p = hardware.local_peaks("cpu", threads=1)
    assert p.flop_s["int8"] == 900e9 and p.flop_s["fp32"] == 100e9
    assert "higher of this and the cached calibration" in p.suspect


def test_load_meter_sees_other_processes():
    spin = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(0.2)
        load = hardware._Load()
        time.sleep(1.0)  # this process idles while the child spins one CPU
        busy = load.others_busy_pct()
    finally:
        spin.wait()
    # one spinning CPU of `cpu_count` is 100 / cpu_count %; others' work only adds to it
    assert busy > hardware.BUSY_PCT
    assert load.load_avg_1m >= 0


def test_calibration_records_its_threads_and_load():
    p = hardware.calibrate("cpu", seconds=1.0, threads=1)
    assert p.threads == 1 and p.name == "local-cpu-1t" and p.source == "measured"
    assert p.others_busy_pct is not None and p.others_busy_pct >= 0
    assert bool(p.suspect) == (p.others_busy_pct > hardware.BUSY_PCT)


def test_peaks_validate_threads():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        Peaks("x", {"fp32": 1e9}, 1e9, GiB, "measured", threads=-1)


def _rec(**kw):
    return {"peaks": {"suspect": ""}, **kw}


def test_sol_above_one_is_flagged_with_its_reason():
    rec = _rec(decode_tok_s=130.0, decode_tok_s_predicted=100.0)
    rec.update(sol.sol_fields(rec))
    assert rec["decode_sol_frac"] == 1.3 and rec["sol_suspect"] is True
    assert rec["sol_suspect_reason"].startswith("decode_sol_frac 1.30 > 1: faster than the "
                                                "calibrated roofline")
    ok = _rec(prefill_tok_s=50.0, prefill_tok_s_predicted=100.0)
    ok.update(sol.sol_fields(ok))
    assert ok["prefill_sol_frac"] == 0.5 and ok["sol_suspect"] is False and ok["sol_suspect_reason"] == ""
    busy = {"peaks": {"suspect": "other processes used 40% of the CPUs"}, "decode_tok_s": 50.0,
            "decode_tok_s_predicted": 100.0}
    busy.update(sol.sol_fields(busy))
    assert busy["sol_suspect"] is True
    assert busy["sol_suspect_reason"] == "calibration suspect: other processes used 40% of the CPUs"
    assert sol.sol_fields(_rec(ppl=12.0)) == {}  # no SoL, nothing to flag


def test_report_marks_suspect_sol(tmp_path):
    import pandas as pd

    from quantbench.report import render

    base = {"schema_version": 2, "model": "m", "device": "cpu", "status": "ok",
            "env": {"host": "h"}, "timestamp": "2026-11-30T00:00:00Z"}
    recs = [  # flagged by the worker, with its reason
        {**base, "format": "gguf-f16", "workload": "tg64", "decode_tok_s": 130.0,
         "decode_tok_s_predicted": 100.0, "decode_sol_frac": 1.3, "sol_suspect": True,
         "sol_suspect_reason": "decode_sol_frac 1.30 > 1: faster than the calibrated roofline"},
        # written before the flag existed: flagged from the value
        {**base, "format": "gguf-q8_0", "workload": "pp512", "prefill_tok_s": 300.0,
         "prefill_tok_s_predicted": 2.93, "prefill_sol_frac": 102.4},
        {**base, "format": "bf16", "workload": "tg64", "decode_tok_s": 20.0,
         "peaks": {"bandwidth_bytes_s": 25e9, "flop_s": {"fp32": 90e9}, "threads": 1,
                   "suspect": "other processes used 40% of the CPUs"},
         "decode_tok_s_predicted": 100.0, "decode_sol_frac": 0.2, "sol_suspect": False,
         "sol_suspect_reason": ""}]
    md = render.render_markdown(pd.json_normalize(recs))
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "1.30 ⚠" in rows["gguf-f16"] and "102.40 ⚠" in rows["gguf-q8_0"]
    assert "⚠" not in rows["bf16"]
    assert "gguf-f16 on cpu: ⚠ SoL suspect: decode_sol_frac 1.30 > 1: faster than the calibrated" in md
    assert ("⚠ SoL suspect: prefill_sol_frac 102.40 above 1: faster than its roofline, so the peaks "
            "it was computed from read low") in md
    assert ("cpu calibrated: 25GB/s, fp32 90GFLOP/s, at 1 thread (⚠ suspect: other processes used "
            "40% of the CPUs)") in md
    html = render.render_html(pd.json_normalize(recs))
    assert html.count('class="ok suspect"') == 2


def test_a_corrupt_cached_calibration_is_recalibrated(tmp_path, monkeypatch, capsys):
    # issue 11 case 9: a corrupted calibration JSON was a traceback (after the results moved)
    from quantbench.arith import hardware

    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path))
    path = hardware._calibration_path("cpu", 1)
    path.parent.mkdir(parents=True)
    path.write_text('{"peaks": {"name": "cpu", "flop_s"')
    fresh = hardware.Peaks("cpu", {"fp32": 1e11}, 2e10, 2**34, "measured", threads=1)
    monkeypatch.setattr(hardware, "calibrate", lambda device, threads: fresh)
    monkeypatch.setattr(hardware, "probe", lambda device, threads: {"bandwidth_bytes_s": 2e10})
    assert hardware.local_peaks("cpu", threads=1) == fresh
    assert "unreadable (JSONDecodeError); recalibrating" in capsys.readouterr().err


def test_gemm_by_m_reads_the_stack_and_keeps_to_its_budget():
    import time

    import torch

    t0 = time.perf_counter()
    got = hardware._gemm_by_m(torch, torch.float32, "cpu", 0.05, lambda: None, stack_bytes=4 * 2**20)
    # 4 MiB of fp32 at K = N = 2048 is one matrix: M = 1 reads it once, 2 · 2048² FLOPs a call
    assert "1" in got and got["1"] > 1e7 and list(got) == sorted(got, key=int)
    assert time.perf_counter() - t0 < 5  # the budget stops the M ladder (one call may overrun it)
    assert hardware._attn_flop_s(torch, torch.float32, "cpu", 0.02, lambda: None) > 1e7
    # the weight stream by width: every K within the budget, in weight bytes per second
    by_k = hardware._gemv_by_k(torch, torch.float32, "cpu", 10.0, lambda: None, stack_bytes=4 * 2**20)
    assert list(by_k) == [str(k) for k in hardware.GEMV_KS] and all(v > 1e7 for v in by_k.values())
    assert list(hardware._gemv_by_k(torch, torch.float32, "cpu", 0.0, lambda: None, stack_bytes=2**20)) == ["512"]


def test_one_outlying_probe_does_not_recalibrate(fake_machine, tmp_path, monkeypatch):
    # The fleet overhead run: a fresh Ray worker's probe read 1.4x the driver's, each recalibrated
    # (~8 s) and the next process, reading the other way, recalibrated back.
    hardware.local_peaks("cpu", threads=1)
    assert len(fake_machine["threads"]) == 1
    quiet = {"bandwidth_bytes_s": 10e9, "fp32_flop_s": 100e9, "others_busy_pct": 0.0}
    readings = [{**quiet, "bandwidth_bytes_s": 15e9}, quiet]  # an outlier, then the usual
    monkeypatch.setattr(hardware, "probe", lambda device="cpu", threads=0: readings.pop(0))
    assert hardware.local_peaks("cpu", threads=1).bandwidth_bytes_s == 10e9
    assert len(fake_machine["threads"]) == 1 and readings == []  # probed twice, not recalibrated
    readings[:] = [{**quiet, "bandwidth_bytes_s": 15e9}] * 2 + [quiet]  # it holds: recalibrate
    hardware.local_peaks("cpu", threads=1)
    assert len(fake_machine["threads"]) == 2 and len(readings) == 0  # and the new cache's own probe
