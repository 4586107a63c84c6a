"""Bad input: one line naming the problem and the fix, exit code 2, earlier records intact."""
import subprocess
import sys

import pytest

from quantbench.core import records


def qb(*args, **kw):
    return subprocess.run([sys.executable, "-m", "quantbench", *args], capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture
def results(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, [{"model": "m", "format": "fp32", "device": "cpu", "workload": "load",
                        "status": "ok", "schema_version": 1}])
    return p


@pytest.mark.parametrize("args,msg", [
    (["run", "--model", "no/such-model-xyz"], "could not be fetched from the Hugging Face hub"),
    (["run", "--model", "./missing-dir"], "unknown model './missing-dir'"),
    (["run", "--formats", "gptq-8b"], "unknown format 'gptq-8b'"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--device", "cuda", "--model", "tiny"], "device 'cuda' asked for but torch sees no GPU"),
    (["run", "--suite", "suites/missing.toml"], "suite file 'suites/missing.toml' not found"),
    (["run", "--set", "n_ctxx=256"], "--set: unknown key 'n_ctxx' (did you mean 'n_ctx'?)"),
    (["run", "--formats", "gguf-q4_0+compiled"], "llama-cpp-python has no torch.compile decode path"),
    (["report", "nope.jsonl", "-o", "/tmp/x.html"], "results file 'nope.jsonl' not found"),
])
def test_bad_input_one_line_exit_2(args, msg, results, tmp_path):
    before = results.read_bytes()
    r = qb(*args, "--out", str(results)) if args[0] == "run" else qb(*args)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and msg in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert results.read_bytes() == before  # records already written stay intact


def test_corrupt_suite(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("formats = [fp32\n")
    r = qb("run", "--suite", str(p))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def test_formats_lists_the_table():
    r = qb("formats")
    assert r.returncode == 0
    for name in ("fp32", "bnb-nf4", "gptq-4b", "awq-4b", "gguf-q4_k_m"):
        assert f"\n{name} " in r.stdout
    assert "gguf-<type> for any of q4_1" in r.stdout and "<format>+compiled" in r.stdout


def test_corrupt_gguf_artifact(tmp_path, tiny):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    suite = tmp_path / "s.toml"
    suite.write_text(f'model = "tiny"\nformats = ["gguf-q4_0"]\nppl_windows = 1\n'
                     f'[artifacts]\n"gguf-q4_0" = "{bad}"\n')
    out = tmp_path / "r.jsonl"
    r = qb("run", "--suite", str(suite), "--out", str(out))
    recs = records.read(out)
    assert r.returncode == 0 and recs and all(x["status"] != "ok" for x in recs)
    assert "broken.gguf" in recs[0]["reason"]
    assert "[gguf-q4_0/cpu] failed: " in r.stderr and "Traceback" not in r.stderr  # bad input: one line
    # the run ends with the verdict and variants table, and the failure names its reason
    assert "## Variants" in r.stdout and "## Verdict" in r.stdout and f"records: {out}" in r.stdout
