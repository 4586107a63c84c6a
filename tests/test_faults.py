"""Faults and hostile input on real processes: no record lost, no silent wrong result.

Runs use the `dummy` format (a numpy bigram, no build) on the `tiny` model's tokens, so a whole run
takes seconds; QUANTBENCH_DUMMY_STEP_S slows each forward so a run can be killed mid-variant.
"""
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from quantbench.core import cache, records
from quantbench.core.errors import UserError
from quantbench.core.suite import Suite
from quantbench.measure import runner

S = ["--model", "tiny", "--set", 'formats=["dummy"]', "--set", "n_ctx=64", "--set", "ppl_windows=2",
     "--set", "prompt_lengths=[32]", "--set", "gen_tokens=8", "--set", "min_samples=2",
     "--set", "kld_tokens=32"]
N_WORKLOADS = 4  # load, pp32, tg8, ppl64


def qb(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "quantbench", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, **kw)


def one_error_line(r) -> str:
    err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    return err[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("base") / "base.jsonl"
    r = qb("run", *S, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(records.read(out)) == N_WORKLOADS
    return out


def keys(path) -> list[tuple]:
    return [records.key(r) for r in records.read(path)]


# 1: a torn last line and --resume, twice: every record once, the fragment set aside
def test_torn_last_line_then_resume_twice(base, tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_bytes(base.read_bytes()[:-300])
    for _ in range(2):
        r = qb("run", *S, "--out", str(t), "--resume")
        assert r.returncode == 0, r.stderr
    got = keys(t)
    assert sorted(got) == sorted(set(got)) and len(got) == N_WORKLOADS
    assert t.read_bytes().endswith(b"\n") and Path(f"{t}.torn").exists()
    assert all(json.loads(line) for line in t.read_text().splitlines())


@contextlib.contextmanager
def tmpfs(path: Path, size: str, ro: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); CI runs as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# 2: disk full while appending: one line naming the path, exit 2, earlier records intact
def test_disk_full_keeps_earlier_records(base, tmp_path):
    with tmpfs(tmp_path / "full", "64k") as d:
        out = d / "r.jsonl"
        lines = base.read_text().splitlines(keepends=True)
        out.write_text(lines[0])
        with contextlib.suppress(OSError):
            with open(d / "filler", "wb") as f:
                f.write(b"\0" * (1 << 20))
        r = qb("run", *S, "--out", str(out), "--resume")
        assert str(out) in one_error_line(r)
        assert out.read_text() == lines[0]


# 3: --resume refuses a file written with other suite settings, model or machine
def test_resume_refuses_other_settings(base, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(base.read_text().splitlines(keepends=True)[:2]))
    before = m.read_bytes()
    r = qb("run", *S, "--set", "n_ctx=32", "--out", str(m), "--resume")
    assert "settings differ" in one_error_line(r) and m.read_bytes() == before


# 5: --out DIR is refused, with and without --resume; nothing is moved
@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_out_directory_is_refused(tmp_path, resume):
    d = tmp_path / "adir"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    assert "is a directory" in one_error_line(qb("run", *S, "--out", str(d), *resume))
    assert (d / "keep.txt").exists() and not (tmp_path / "previous").exists()


# 6, 9, 17: duplicates, an empty format list and degenerate numbers are refused before anything moves
@pytest.mark.parametrize("sets,msg", [
    (['formats=["dummy","dummy"]'], "formats lists dummy twice"),
    (['devices=["cpu","cpu"]'], "devices lists cpu twice"),
    (["formats=[]"], "formats is empty"),
    (["prompt_lengths=[-5]"], "prompt_lengths must be >= 1"),
    (["gen_tokens=1"], "gen_tokens must be >= 2"),
    (["n_ctx=2"], "n_ctx must be >= 8"),
    (["kld_tokens=-1"], "kld_tokens must be >= 0"),
    (["time_budget_s=-1"], "time_budget_s must be > 0"),
])
def test_bad_suite_values_are_refused_and_nothing_moves(base, tmp_path, sets, msg):
    out = tmp_path / "r.jsonl"
    out.write_bytes(base.read_bytes())
    args = [a for s in sets for a in ("--set", s)]
    assert msg in one_error_line(qb("run", *S, *args, "--out", str(out)))
    assert out.read_bytes() == base.read_bytes() and not (tmp_path / "previous").exists()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _start_slow_run(out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quantbench", "run", *S, "--out", str(out), *extra],
                            env={**os.environ, "QUANTBENCH_DUMMY_STEP_S": "0.5"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_worker(proc) -> list[psutil.Process]:
    deadline = time.time() + 120
    while time.time() < deadline:
        kids = [c for c in _children(proc.pid) if "quantbench.measure.worker" in " ".join(c.cmdline())]
        if kids:
            return kids
        time.sleep(0.1)
    raise AssertionError("no worker started")


def _gone(procs, timeout_s=10.0) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return not alive


# 7: killing the runner kills its worker; SIGTERM is handled as Ctrl-C (message, records kept)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_runner_leaves_no_orphan(tmp_path, tiny, sig):
    proc = _start_slow_run(tmp_path / "r.jsonl")
    workers = _wait_for_worker(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert _gone(workers), "the worker outlived its runner"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "records written so far are kept" in err
        assert "Traceback" not in err


# 8: damaged cache entries are detected and rebuilt
def test_damaged_cache_dir_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path))
    final = cache.entry("quant", "k")
    with cache.atomic_dir(final) as d:
        (d / "model.safetensors").write_bytes(b"w" * 1000)
    assert cache.verified(final)
    with open(final / "model.safetensors", "r+b") as f:
        f.truncate(10)
    assert not cache.verified(final) and not final.exists()


def test_damaged_npy_is_detected(tmp_path):
    import numpy as np

    p = tmp_path / "ids.npy"
    np.save(p, np.arange(1000, dtype=np.int32))
    assert cache.valid_npy(p, 1000)
    assert not cache.valid_npy(p, 999) and not p.exists()  # the wrong length: removed, rebuilt
    np.save(p, np.arange(1000, dtype=np.int32))
    with open(p, "r+b") as f:
        f.truncate(500)
    assert not cache.valid_npy(p) and not p.exists()


def test_damaged_reference_is_not_read_and_says_why(tmp_path, tiny):
    out = tmp_path / "r.jsonl"
    fmts = ["--set", 'formats=["dummy","bf16"]']
    assert qb("run", *S, *fmts, "--out", str(out)).returncode == 0
    ref = next(r for r in records.read(out) if r["workload"] == "ppl64" and r["format"] == "dummy")
    assert "differs from the bf16 reference" in ref["kld_reason"]  # bf16 runs first: the reference
    newest = max((cache.cache_dir() / "reference").glob("*.npy"), key=lambda p: p.stat().st_mtime)
    with open(newest, "r+b") as f:
        f.truncate(100)
    out.write_text("".join(x for x in out.read_text().splitlines(keepends=True) if '"dummy"' not in x))
    r = qb("run", *S, *fmts, "--out", str(out), "--resume")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rec = next(r for r in records.read(out) if r["workload"] == "ppl64" and r["format"] == "dummy")
    assert rec["status"] == "ok" and "missing or damaged" in rec["kld_reason"] and not newest.exists()


# 13, 16: an unwritable results dir or cache fails before measuring, naming the path
def test_read_only_results_dir_fails_before_measuring(tmp_path):
    with tmpfs(tmp_path / "ro", "64k", ro=True) as d:
        line = one_error_line(qb("run", *S, "--out", str(d / "r.jsonl")))
        assert "not writable" in line and str(d) in line


def test_full_cache_fails_in_one_line(tmp_path, tiny):
    with tmpfs(tmp_path / "cache", "64k") as d:
        with contextlib.suppress(OSError):
            (d / "filler").write_bytes(b"\0" * (1 << 20))
        line = one_error_line(qb("run", *S, "--out", str(tmp_path / "r.jsonl"),
                                 env={"QUANTBENCH_CACHE": str(d)}))
        assert str(d) in line


def test_unwritable_report_path_fails_before_measuring(tmp_path):
    d = tmp_path / "rep"
    d.mkdir()
    line = one_error_line(qb("run", *S, "--out", str(tmp_path / "r.jsonl"), "--report", str(d)))
    assert "--report" in line and not (tmp_path / "r.jsonl").exists()


# 11: hostile results files
@pytest.mark.parametrize("content,msg", [
    (b"\xff\xfe garbage\n", "not UTF-8"),
    (json.dumps({"model": ["m"], "format": "fp32", "device": "cpu", "workload": "load",
                 "status": "ok"}).encode() + b"\n", "not a quantbench record"),
    (json.dumps({"model": "m", "format": "fp32", "device": "cpu", "workload": "load",
                 "status": "maybe"}).encode() + b"\n", "not a quantbench record"),
])
@pytest.mark.parametrize("cmd", ["report", "compare", "resume"])
def test_hostile_results_files(tmp_path, content, msg, cmd):
    p = tmp_path / "r.jsonl"
    p.write_bytes(content)
    argv = {"report": ["report", str(p), "-o", str(tmp_path / "x.html")],
            "compare": ["compare", str(p), str(p)],
            "resume": ["run", *S, "--out", str(p), "--resume"]}[cmd]
    line = one_error_line(qb(*argv))
    assert msg in line and "r.jsonl:1" in line


# 12: a model directory without a tokenizer
def test_model_dir_without_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert "has no tokenizer" in one_error_line(qb("run", "--model", str(tmp_path), "--out",
                                                   str(tmp_path / "r.jsonl")))


# 18: a SIGKILL is not called out of memory unless the cgroup's OOM killer did it
def test_sigkill_label():
    assert "not by this cgroup's out-of-memory killer" in runner._crash_reason(-signal.SIGKILL, False, 0)
    assert "out-of-memory killer" in runner._crash_reason(-signal.SIGKILL, False, 1)


def test_shipped_suite_found_from_anywhere(tmp_path, monkeypatch):
    from quantbench.core.suite import load_suite

    monkeypatch.chdir(tmp_path)
    assert load_suite("suites/quick.toml").name == "quick"
    with pytest.raises(UserError, match="shipped suites in .*quick.toml"):
        load_suite("suites/nope.toml")


def test_history_names_never_collide(tmp_path):
    out = tmp_path / "r.jsonl"
    for i in range(3):
        out.write_text(f"{i}\n")
        os.utime(out, (1_700_000_000, 1_700_000_000))
        runner._rotate(out)
    assert sorted(p.read_text() for p in (tmp_path / "previous").iterdir()) == ["0\n", "1\n", "2\n"]


# The fault-injection run: kill runner and worker at random points; resume until done
def test_random_kills_then_resume_end_with_every_record_once(tmp_path, tiny):
    rng = random.Random(1)
    out = tmp_path / "r.jsonl"
    fmts = ["--set", 'formats=["dummy","bf16"]']
    for _attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "quantbench", "run", *S, *fmts, "--out", str(out),
                                 "--resume"], env={**os.environ, "QUANTBENCH_DUMMY_STEP_S": "0.02"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # a whole run of both variants takes ~10-20 s on 2 quiet cores and ~35 s at load 5 (the bf16
            # worker also probes its kernels): the window widens with each attempt, so the early ones
            # kill at random points and a later one can finish on a loaded machine too
            proc.wait(timeout=rng.uniform(1.0, 10.0 + 5.0 * _attempt))
        except subprocess.TimeoutExpired:
            victims = [proc.pid] + [c.pid for c in _children(proc.pid)]
            os.kill(rng.choice(victims), signal.SIGKILL)
            kids = _children(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert _gone(kids), "an orphaned worker survived"
            continue
        assert proc.returncode == 0, proc.stderr.read()
        break
    else:
        pytest.fail("no run finished in 12 attempts")
    recs = records.read(out)
    last = {records.key(r): r for r in recs}
    assert not [(k, r["reason"]) for k, r in last.items() if r["status"] != "ok"]
    ok = [records.key(r) for r in recs if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 2 * N_WORKLOADS  # each measured once; a killed try left `failed`
    assert all(json.loads(x) for x in out.read_text().splitlines())


def test_runner_suite_validation_unit():
    with pytest.raises(UserError, match="formats is empty"):
        Suite(formats=())


# 15: Ctrl-C reaches the whole process group: one message, no worker traceback, records kept
def test_ctrl_c_prints_one_message_not_a_traceback(tmp_path, tiny):
    proc = subprocess.Popen([sys.executable, "-m", "quantbench", "run", *S, "--out", str(tmp_path / "r.jsonl")],
                            env={**os.environ, "QUANTBENCH_DUMMY_STEP_S": "0.5"}, start_new_session=True,
                            # a job started in the background (CI under `&`) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = _wait_for_worker(proc)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "records written so far are kept" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert _gone(workers)
    # the variant in flight keeps what it measured; the rest say they were interrupted (--resume)
    from quantbench.measure.runner import INTERRUPTED

    recs = records.read(tmp_path / "r.jsonl")
    assert recs and {r["format"] for r in recs} == {"dummy"}
    assert all(r["status"] == "ok" or r["reason"] == INTERRUPTED for r in recs)
    assert any(r["reason"] == INTERRUPTED for r in recs)


# 18: an unknown format under [artifacts] names the file and the key; hf formats take no artifact
@pytest.mark.parametrize("body,msg", [
    ('[artifacts]\n"gptq-8b" = "x"\n', "bad.toml: [artifacts] key 'gptq-8b': unknown format"),
    ('[artifacts]\n"bf16" = "x"\n', "artifacts apply to gptq-*, awq-* and gguf-* formats only"),
])
def test_artifacts_keys_are_checked(tmp_path, body, msg):
    from quantbench.core.suite import load_suite

    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(UserError, match=msg.replace("[", "\\[").replace("]", "\\]").replace("*", "\\*")):
        load_suite(p)


def test_report_is_rerendered_after_each_variant(tmp_path, tiny, monkeypatch):
    from quantbench.cli import main
    from quantbench.report import render

    rendered = []
    real = render.write_report
    monkeypatch.setattr(render, "write_report",
                        lambda paths, out, title="": rendered.append(len(records.read(paths[0]))) or real(paths, out))
    assert main.main(["run", *S, "--set", 'formats=["dummy","bf16"]', "--out", str(tmp_path / "r.jsonl"),
                     "--report", str(tmp_path / "r.html")]) == 0
    # after the first variant (its 4 records), after the second (8), and once at the end
    assert rendered == [N_WORKLOADS, 2 * N_WORKLOADS, 2 * N_WORKLOADS]
