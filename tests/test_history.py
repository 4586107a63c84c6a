"""Run history: fingerprints from env blocks, one file per run per machine, --baseline auto."""
import json
import subprocess
import sys

import pytest
from synthetic_history import ENV, commit, one_run, write_history

from quantbench import read_history
from quantbench.core import records
from quantbench.track import history


def test_machine_and_fingerprint_by_hand():
    m = history.machine({**ENV, "git_commit": "abc"})
    assert m == {"cpu": "AMD EPYC 7763 64-Core Processor", "cpu_physical_cores": 2, "cpu_logical_cores": 2,
                 "ram_gib": 24, "gpu": "", "gpu_driver": "", "torch": "2.13.0+cpu",
                 "transformers": "5.24.0", "llama_cpp_python": "0.3.36"}  # 25_276_510_208 B = 23.5 GiB
    fp = history.fingerprint(m)
    assert fp.startswith("amd-epyc-7763-2c-24g-") and len(fp) == len("amd-epyc-7763-2c-24g-") + 8
    gpu = history.machine({**ENV, "gpu": "NVIDIA H100 80GB HBM3", "gpu_driver": "550.54"})
    assert history.fingerprint(gpu).startswith("amd-epyc-7763-2c-24g-h100-80gb-hbm3-")
    # the hostname and the commit are no part of it; a library version is
    assert history.fingerprint(history.machine({**ENV, "host": "other", "git_commit": "x"})) == fp
    newer = history.machine({**ENV, "torch": "2.14.0"})
    assert history.fingerprint(newer) != fp
    assert history.hardware_id(newer) == history.hardware_id(m)  # same hardware, other software
    assert history.differences(m, newer) == ["torch '2.13.0+cpu' -> '2.14.0'"]


def test_track_layout_and_machine_json(tmp_path):
    hist = write_history(tmp_path, 2)
    fp = history.fingerprint(history.machine(ENV))
    assert sorted(p.relative_to(hist).as_posix() for p in hist.rglob("*")) == [
        fp, f"{fp}/20261101T000000Z-{commit(0)}.jsonl", f"{fp}/20261101T010000Z-{commit(1)}.jsonl",
        f"{fp}/machine.json"]
    info = json.loads((hist / fp / "machine.json").read_text())
    assert info["fingerprint"] == fp and info["ram_gib"] == 24 and info["torch"] == "2.13.0+cpu"
    assert info["hardware"] == history.hardware_id(history.machine(ENV))
    assert len(records.read(hist / fp / f"20261101T000000Z-{commit(0)}.jsonl")) == 8  # 2 formats x 4


def test_two_machines_never_share_a_file(tmp_path):
    mixed = tmp_path / "mixed.jsonl"  # one results file holding two machines' records
    records.append(mixed, one_run(0) + one_run(1, env={"cpu": "Intel Xeon Platinum 8480+"}))
    records.append(mixed, one_run(2, env={"torch": "2.14.0"}))
    tracked = history.track([mixed], tmp_path / "h")
    assert len(tracked) == 3 and len({r.machine for r in tracked}) == 3
    for f in (tmp_path / "h").glob("*/*.jsonl"):
        fps = {history.fingerprint(history.machine(r["env"])) for r in records.read(f)}
        assert fps == {f.parent.name}


def test_tracking_twice_is_one_run(tmp_path):
    res = tmp_path / "r.jsonl"
    records.append(res, one_run(0))
    history.track([res], tmp_path / "h")
    records.append(res, [{**one_run(0)[0], "decode_tok_s": 1.0}])  # a re-run of one key, resumed
    (run,) = history.track([res], tmp_path / "h")
    assert len(list((tmp_path / "h").glob("*/*.jsonl"))) == 1
    recs = run.records()
    assert len(recs) == 8 and recs[0]["decode_tok_s"] == 1.0  # the last record of a key wins


def test_read_history(tmp_path):
    hist = write_history(tmp_path, 3)
    df = read_history(hist)
    assert len(df) == 3 * 8 and list(df.run.drop_duplicates()) == [0, 1, 2]
    assert list(df.commit.drop_duplicates()) == [commit(i) for i in range(3)]
    assert set(df.machine) == {history.fingerprint(history.machine(ENV))}
    assert set(df["env.torch"]) == {"2.13.0+cpu"}


# --- compare --baseline auto ----------------------------------------------------------------

def cli(*argv):
    from quantbench.cli.main import main

    return main(["compare", *map(str, argv)])


@pytest.fixture
def mixed_history(tmp_path):
    """Runs 0-3: machine A suite s1; run 4: A, suite s2; run 5: machine B, suite s1."""
    other = {"cpu": "Intel Xeon Platinum 8480+"}
    return write_history(tmp_path, 6, lambda i: {"suite_hash": "s2"} if i == 4 else
                         {"env": other} if i == 5 else {})


def test_baseline_auto_picks_latest_same_machine_and_suite(mixed_history, tmp_path, capsys):
    new = tmp_path / "new.jsonl"
    records.append(new, one_run(6))
    assert history.baseline_for(mixed_history, one_run(6)).commit == commit(3)
    assert cli("--baseline", "auto", "--history", mixed_history, new) == 0
    err = capsys.readouterr().err
    assert f"baseline: {mixed_history}/" in err and f"-{commit(3)}.jsonl" in err
    assert "no regressions" in err
    # `run --history` tracks the new run first: auto must not pick the run itself
    history.track([new], mixed_history)
    assert history.baseline_for(mixed_history, one_run(6)).commit == commit(3)


def test_baseline_auto_without_a_match_compares_nothing(mixed_history, tmp_path, capsys):
    new = tmp_path / "new.jsonl"
    records.append(new, one_run(7, env={"gpu": "NVIDIA H200"}))
    assert cli("--baseline", "auto", "--history", mixed_history, new) == 0
    assert "note: no baseline: " in capsys.readouterr().err
    capsys.readouterr()
    assert cli("--baseline", "auto", "--history", mixed_history, new, new) == 2  # NEW alone
    assert cli("--baseline", "auto", "--history", mixed_history) == 2
    assert cli(new) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: with --baseline auto give NEW alone (the baseline comes from --history)"] * 2 + [
        "error: compare needs BASE and NEW results files, or --baseline auto --history DIR NEW"]


def test_run_with_history(tmp_path):
    hist, out = tmp_path / "h", tmp_path / "r.jsonl"
    run = subprocess.run([sys.executable, "-m", "quantbench", "run", "--model", "tiny", "--formats", "dummy",
                          "--set", "ppl_windows=1", "--out", str(out), "--history", str(hist)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (f,) = hist.glob("*/*.jsonl")
    assert f"history: {f}" in run.stdout
    assert records.read(f) == records.read(out)
    assert f.parent.name == history.fingerprint(history.machine(records.environment()))


def test_track_cli(tmp_path, capsys):
    from quantbench.cli.main import main

    res = tmp_path / "r.jsonl"
    records.append(res, one_run(0) + one_run(1, env={"gpu": "NVIDIA H200", "gpu_driver": "570.1"}))
    assert main(["track", str(res), "--history", str(tmp_path / "h")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"history: {p}" for p in (tmp_path / "h").glob("*/*.jsonl"))
    assert len(lines) == 2
    assert main(["track", str(tmp_path / "missing.jsonl"), "--history", str(tmp_path / "h")]) == 2
    assert "results file" in capsys.readouterr().err


def test_two_suites_in_the_same_second_keep_two_files(tmp_path):
    res = tmp_path / "r.jsonl"
    records.append(res, one_run(0) + one_run(0, suite_hash="s2"))
    tracked = history.track([res], tmp_path / "h")
    assert [r.path.name for r in tracked] == [f"20261101T000000Z-{commit(0)}.jsonl",
                                              f"20261101T000000Z-{commit(0)}-s2.jsonl"]
    assert [len(r.records()) for r in tracked] == [8, 8]
    assert [r.commit for r in history.runs(tmp_path / "h")] == [commit(0), f"{commit(0)}-s2"]
