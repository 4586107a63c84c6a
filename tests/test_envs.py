"""Backend environments: a format's worker runs under its own venv's python, and a format whose
venv is not built is one skipped record naming the build command."""
import dataclasses
import sys

import pytest

from quantbench.core import envs, formats, records
from quantbench.core.suite import Suite
from quantbench.measure import runner

SUITE = Suite(name="env", model="tiny", formats=("dummy",), prompt_lengths=(8,), gen_tokens=2,
              min_samples=1, time_budget_s=1.0, n_ctx=16, ppl_windows=1, quality_budget_s=10.0,
              kld_tokens=16)


@pytest.fixture
def tiny_env(monkeypatch, tmp_path, tiny):
    """Registers an environment with nothing to install and runs the dummy format in it (in the
    runner's process only: the worker needs no say in where it runs)."""
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(envs.ENVS, "tiny-env", envs.BackendEnv("tiny-env", (), "test: an empty overlay"))
    fmt = dataclasses.replace(formats.FORMATS["dummy"], env="tiny-env")
    monkeypatch.setitem(formats.FORMATS, "dummy", fmt)
    return fmt


def test_missing_env_is_a_skipped_record(tiny_env, tmp_path):
    out = tmp_path / "r.jsonl"
    runner.run(SUITE, out)
    recs = records.read(out)
    assert {r["status"] for r in recs} == {"skipped"} and len(recs) == len(SUITE.workloads())
    assert recs[0]["reason"] == ("dummy runs in the backend environment 'tiny-env', not built here; "
                                 "build it once with `quantbench env build tiny-env` (test: an empty overlay)")
    assert recs[0]["backend_env"] == "tiny-env"


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the overlay test runs from inside a venv")
def test_worker_runs_under_the_env_python(tiny_env, tmp_path):
    exe = envs.build("tiny-env", log=lambda *_: None)
    assert envs.python("tiny-env") == exe and exe.parent.parent.parent.name == "envs"
    assert str(exe) != sys.executable
    out = tmp_path / "r.jsonl"
    runner.run(SUITE, out)
    recs = {r["workload"]: r for r in records.read(out)}
    assert {r["status"] for r in recs.values()} == {"ok"}, [r.get("reason") for r in recs.values()]
    assert recs["tg2"]["backend_env"] == "tiny-env"
    assert recs["tg2"]["env"]["python_executable"] == str(exe)


def test_half_built_env_is_rebuilt(tiny_env):
    d = envs.env_dir(envs.ENVS["tiny-env"])
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "python").write_text("")  # no READY stamp: an interrupted build
    assert envs.python("tiny-env") is None


def test_unknown_env_names_the_known_ones():
    from quantbench.core.errors import UserError

    with pytest.raises(UserError, match="unknown backend environment 'nope'"):
        envs.get_env("nope")


def test_autoround_missing_env_is_one_line_naming_the_build():
    fmt = formats.get_format("autoround-4b")
    reason = envs.missing_reason(fmt.name, fmt.env)
    assert "\n" not in reason and reason.startswith("autoround-4b runs in the backend environment 'auto-round'")
    assert "`quantbench env build auto-round`" in reason
    assert fmt.group_size == 64 and 576 % fmt.group_size == 0  # 128 does not divide SmolLM2's 576


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the overlay test runs from inside a venv")
def test_run_build_envs_builds_what_the_suite_needs_once(tiny_env):
    from quantbench.cli.main import _build_envs, build_parser

    assert build_parser().parse_args(["run", "--build-envs"]).build_envs
    assert envs.python("tiny-env") is None
    assert _build_envs(dataclasses.replace(SUITE, formats=("dummy",))) == ["tiny-env"]
    assert envs.python("tiny-env") is not None
    assert _build_envs(dataclasses.replace(SUITE, formats=("dummy",))) == []  # built: nothing to do
    assert _build_envs(dataclasses.replace(SUITE, formats=("fp32",))) == []  # needs none
