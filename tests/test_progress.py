"""Long builds show progress: the quantizer's layer counter becomes a console line with an ETA."""
import os
import re
import time

from quantbench.measure import worker


def test_progress_line_eta():
    assert worker.progress_line("[gptq-4b/cpu]", 0, 30, 5.0) == "[gptq-4b/cpu] quantizing: layer 0/30, 0:05 elapsed"
    # 10 of 30 layers in 3 min: 20 left at 18 s each
    assert worker.progress_line("[g]", 10, 30, 180.0) == "[g] quantizing: layer 10/30, 3:00 elapsed, ~6:00 left"


def test_log_progress_follows_the_quantizers_log(tmp_path, monkeypatch):
    log = tmp_path / "b.log"
    log.write_bytes(b"")
    r, w = os.pipe()
    monkeypatch.setenv(worker.CONSOLE_FD_ENV, str(w))
    monkeypatch.setattr(worker, "PROGRESS_EVERY_S", 0.05)
    follow = worker.LogProgress(log, "[gptq-4b/cpu]")
    follow.start()
    for layer in range(3):
        with open(log, "ab") as f:
            f.write(b"\x1b[2K INFO  StageLayer: start layer=%d/2 title=`Quantizing layer %d of 2`\r\n" % (layer, layer))
        time.sleep(0.3)
    follow.stop.set()
    follow.join()
    os.close(w)
    out = os.read(r, 65536).decode().splitlines()
    assert [line.split(",")[0] for line in out] == [f"[gptq-4b/cpu] quantizing: layer {i}/3" for i in range(3)]
    assert "left" in out[-1]


def test_run_length_estimate_matches_the_measured_cold_run():
    """The default suite's 11 variants of the embedded model (134.5M parameters, 5 workloads each)
    took 580 s of measuring in a cold run on this machine (commit 823d02d, load 0.9-1.6)."""
    from quantbench.measure.runner import measure_estimate_s

    assert 0.85 < measure_estimate_s(134.5e6, 11, 5) / 580 < 1.15
    assert measure_estimate_s(134.5e6, 0, 5) == 0


def test_a_run_announces_its_length_and_what_is_left(tmp_path, tiny, capsys):
    from quantbench.core.suite import Suite
    from quantbench.measure import runner

    suite = Suite(name="t", model="tiny", formats=("dummy", "fp32"), prompt_lengths=(16,), gen_tokens=4,
                  min_samples=1, time_budget_s=1.0, n_ctx=32, ppl_windows=1, quality_budget_s=10.0, kld_tokens=8)
    out = tmp_path / "r.jsonl"
    runner.run(suite, out)
    line = re.search(r"\[quantbench\] this run: ~(\d+) s \(measuring 2 variants ~(\d+) s\)", capsys.readouterr().out)
    assert line and line[1] == line[2] and 20 <= int(line[1]) < 90  # 2 x (10 s + a tiny model's share)
    runner.run(suite, out, resume=True)  # everything done: nothing left to measure
    assert "this run: ~0 s (measuring 0 variants ~0 s)" in capsys.readouterr().out
