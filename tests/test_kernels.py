"""Kernel truth: the detectors on captured engine output, the kernel-path twins, and (slow) the
crash fallback driven by the test hook, which kills a worker as llama.cpp's AMX path does."""
import json

import pytest

from quantbench.backends import kernels
from quantbench.core.errors import UserError
from quantbench.core.formats import KERNEL_PATHS, get_format, with_kernel_paths
from quantbench.core.suite import Suite

# llama.cpp 0.3.36's load log on a 2-core Sapphire Rapids guest (issue 23) and on this EPYC.
AMX_LOG = """load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors:          AMX model buffer size =    97.50 MiB
load_tensors:   CPU_Mapped model buffer size =   138.28 MiB
"""
REPACK_LOG = """load_tensors:   CPU_REPACK model buffer size =    34.50 MiB
load_tensors:   CPU_Mapped model buffer size =   103.30 MiB
"""
CUDA_LOG = """load_tensors: offloaded 31/31 layers to GPU
load_tensors:        CUDA0 model buffer size =    88.10 MiB
load_tensors:   CPU_Mapped model buffer size =    28.12 MiB
"""
SYSTEM_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
               "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
               "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


def buffers(log: str) -> dict:
    from quantbench.backends.gguf import BUFFER_LOG

    out = {}
    for line in log.splitlines():
        if m := BUFFER_LOG.search(line):
            out[m[1]] = round(float(m[2]) * 2**20)
    return out


def test_llama_cpp_kernel_from_its_buffer_log():
    pytest.importorskip("gguf")
    from quantbench.backends.gguf import kernel_from_buffers, system_flags

    amx = buffers(AMX_LOG)
    assert amx == {"AMX": round(97.5 * 2**20), "CPU_Mapped": round(138.28 * 2**20)}
    assert kernel_from_buffers(amx) == "llama.cpp:AMX"
    assert kernel_from_buffers(buffers(REPACK_LOG)) == "llama.cpp:CPU_REPACK"
    assert kernel_from_buffers(buffers(CUDA_LOG)) == "llama.cpp:CUDA"
    assert kernel_from_buffers({"CPU_Mapped": 1000}) == "llama.cpp:CPU"
    assert kernel_from_buffers({"CPU_REPACK": 0, "CPU_Mapped": 10}) == "llama.cpp:CPU"  # empty buffer
    assert kernel_from_buffers({}) == ""
    flags = system_flags(SYSTEM_INFO)
    assert flags["AMX_INT8"] == "1" and flags["REPACK"] == "1" and flags["AVX512_BF16"] == "1"
    assert flags["SSE3"] == "1" and len(flags) == 15


# oneDNN 3.x verbose lines, as torch 2.13 printed them on this EPYC (bf16 matmul) and as an AMX
# Xeon prints them (implementation name from oneDNN's brgemm matmul).
ONEDNN_LOG = """onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16::blocked:ab::f0,attr-scratchpad:user,,8x64:64x32,0.032959
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,,,8x64:64x32,0.02
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,,,8x64:64x32,0.02
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:ab::f0,,,8x64,0.01
"""


def test_onednn_primitives_and_cpu_label():
    prims = kernels.onednn_primitives(ONEDNN_LOG)
    assert prims == {"matmul": "brg_matmul:avx512_core_amx", "reorder": "jit:uni"}  # the most frequent
    detail = {"onednn": prims, "top_ops": [{"op": "aten::mm", "pct": 80.0}], "mkl": True}
    assert kernels.cpu_label(detail, "bf16") == "torch:onednn-avx512_core_amx-bf16"
    plain = {"onednn": {}, "mkl": True,
             "top_ops": [{"op": "aten::embedding", "pct": 40.0}, {"op": "aten::mm", "pct": 30.0}]}
    assert kernels.cpu_label(plain, "fp32") == "torch:mkl-fp32"
    assert kernels.cpu_label(plain, "bf16") == "torch:aten-bf16"  # ATen's own GEMM, no oneDNN
    intmm = {"onednn": {}, "mkl": True, "top_ops": [{"op": "aten::_int_mm", "pct": 60.0}]}
    assert kernels.cpu_label(intmm, "int8") == "torch:aten::_int_mm"


# CUDA kernel names as CUPTI reports them (Hopper cuBLAS, Marlin, llama.cpp, bitsandbytes, Triton).
CUDA_NAMES = {
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "cublas",
    "nvjet_tst_128x64_64x8_1x1_v_bz_coopB_TNT": "cublas",
    "void marlin::Marlin<(marlin::ScalarType)5, 256, 1, 8, 8, 8, false, 4, -1, false>(...)": "marlin",
    "void mul_mat_vec_q<(ggml_type)8, 1, false>(void const*, void const*, ...)": "llama.cpp-mmvq",
    "void mul_mat_q<(ggml_type)2, 64, false>(char const*, int const*, ...)": "llama.cpp-mmq",
    "void flash_attn_ext_f16<64, 64, 8, 2, false>(char const*, ...)": "llama.cpp-fattn",
    "void kgemm_4bit_inference_naive<__nv_bfloat16, 128, 16>(int, int, int, ...)": "bnb",
    # seen on the H200 (results/gpu/): bnb's NF4 GEMM, its int8 row quantizer, llama.cpp's F16 matmul
    "void gemm_4bit_simt<__nv_bfloat16, 8>(__nv_bfloat16 const*, unsigned char const*, float const*)": "bnb",
    "void kInt8VectorQuant<__half, 1024, 0>(__half*, signed char*, float*, float, int, int)": "bnb",
    "void mul_mat_f<__half2, 32, 8, 5, false>(__half2 const*, float const*, int const*, float*)": "llama.cpp-mmf",
    "nvjet_sm90_hsh_8x64_64x16_4x1_v_bz_TNN": "cublas",
    "triton_poi_fused_add_mul_0": "triton",
    "void at::native::elementwise_kernel<128, 2, ...>": "other",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>": "flash-attention",
}


def test_cuda_kernel_classes():
    assert {n: kernels.classify(n) for n in CUDA_NAMES} == CUDA_NAMES
    ks = [{"name": n, "class": kernels.classify(n), "pct": p} for n, p in
          (("void mul_mat_vec_q<(ggml_type)8, 1, false>", 50.0), ("void flash_attn_ext_f16<64>", 30.0),
           ("sm90_xmma_gemm_bf16bf16", 15.0), ("void at::native::elementwise_kernel", 5.0))]
    assert kernels.cuda_label(ks) == "llama.cpp-mmvq"  # attention and elementwise are not the matmul path
    assert kernels.cuda_label([]) == ""


def test_kernel_path_twins():
    f = get_format("gguf-q8_0+path-norepack")
    assert (f.kernel_path, f.base, f.backend) == ("norepack", "gguf-q8_0", "gguf")
    kv = get_format("gguf-q4_0+kv-q8_0+path-norepack")
    assert (kv.kv_type, kv.kernel_path, kv.base) == ("q8_0", "norepack", "gguf-q4_0")
    assert get_format("bf16+compiled+path-avx2").compiled
    assert get_format("bf16+path-noamx").base == "bf16"
    with pytest.raises(UserError, match="not one llama-cpp-python offers; use norepack"):
        get_format("gguf-q8_0+path-avx2")
    with pytest.raises(UserError, match="kernel path 'amx9'"):
        get_format("bf16+path-amx9")
    assert with_kernel_paths(["bf16", "gguf-q4_0"], ["default", "norepack", "avx2"]) == [
        "bf16", "bf16+path-avx2", "gguf-q4_0", "gguf-q4_0+path-norepack"]
    assert dict(KERNEL_PATHS["avx2"].env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_suite_kernel_keys():
    s = Suite(formats=("gguf-q4_0",), kernel_paths=("default", "norepack"))
    assert s.kernel_fallback is True
    with pytest.raises(UserError, match=r"kernel_paths \['amx'\] unknown"):
        Suite(formats=("gguf-q4_0",), kernel_paths=("amx",))


def test_runner_plan_crosses_kernel_paths():
    from quantbench.measure.runner import plan

    s = Suite(formats=("fp32", "gguf-q4_0"), kernel_paths=("norepack",), kv_types=("q8_0",))
    assert [f for _, f in plan(s)] == ["fp32", "gguf-q4_0", "gguf-q4_0+path-norepack",
                                       "gguf-q4_0+kv-q8_0", "gguf-q4_0+kv-q8_0+path-norepack"]


def test_report_flags_a_fallback():
    from quantbench.report.render import cell_text, details_text

    row = {"status": "ok", "kernel": "llama.cpp:CPU", "format": "gguf-q8_0+path-norepack",
           "kernel_fallback": "gguf-q8_0 worker killed by SIGSEGV on llama.cpp:AMX"}
    assert cell_text(row, "kernel", "") == "llama.cpp:CPU ⚠ fallback"
    assert "⚠ kernel fallback: gguf-q8_0 worker killed by SIGSEGV" in details_text(row)
    crash = {"status": "failed", "reason": "worker killed by SIGSEGV", "kernel": "llama.cpp:AMX",
             "crash_signal": "SIGSEGV", "crash_upstream": "ggml-org/llama.cpp#20824"}
    assert "✖ engine crash: SIGSEGV in llama.cpp:AMX (known upstream: ggml-org/llama.cpp#20824)" \
        in details_text(crash)
    assert cell_text({"kernel": "torch:mkl-fp32"}, "kernel", "") == "torch:mkl-fp32"


# --- slow: real workers on the tiny model -------------------------------------------------------

SUITE = dict(model="tiny", devices=("cpu",), prompt_lengths=(32,), gen_tokens=4, min_samples=2,
             time_budget_s=0.5, n_ctx=64, ppl_windows=2, quality_budget_s=10.0, kld_tokens=32,
             decode_batches=(2,), omp_wait_policy="passive")


def _run(tmp_path, monkeypatch, capfd, **kw):
    pytest.importorskip("llama_cpp")
    from quantbench.core import records
    from quantbench.measure import runner

    monkeypatch.setenv("QUANTBENCH_TEST_CRASH", "gguf:default")
    out = runner.run(Suite(name="crash", **{**SUITE, **kw}), tmp_path / "crash.jsonl")
    return records.read(out), capfd.readouterr().out


@pytest.mark.slow
def test_engine_crash_falls_back_and_keeps_both(tmp_path, monkeypatch, capfd):
    recs, console = _run(tmp_path, monkeypatch, capfd, formats=("gguf-f16", "gguf-q8_0"))
    workloads = Suite(name="x", formats=("gguf-f16",), **SUITE).workloads()
    by = {}
    for r in recs:
        by.setdefault(r["format"], []).append(r)
    # the crash: every workload of each default path failed, with the signal and the path loaded
    assert set(by) == {"gguf-f16", "gguf-q8_0", "gguf-f16+path-norepack", "gguf-q8_0+path-norepack"}
    for f in ("gguf-f16", "gguf-q8_0"):
        crashed = [r for r in by[f] if r["status"] == "failed"]
        assert {r["workload"] for r in by[f]} == {str(w) for w in workloads}
        assert crashed and all(r["crash_signal"] == "SIGSEGV" for r in crashed)
        assert all(r["kernel"].startswith("llama.cpp:") for r in crashed)
        assert all("model buffer size" in "".join(r["engine_log_tail"]) or r["engine_log_tail"]
                   for r in crashed)
    # the fallback: every workload ok on the safer path, which says why it ran
    for f in ("gguf-f16+path-norepack", "gguf-q8_0+path-norepack"):
        assert {r["workload"] for r in by[f]} == {str(w) for w in workloads}
        assert all(r["status"] == "ok" for r in by[f]), [r["reason"] for r in by[f]]
        assert all(r["kernel"] == "llama.cpp:CPU" and r["kernel_path"] == "norepack" for r in by[f])
        assert all("killed by SIGSEGV" in r["kernel_fallback"] for r in by[f])
        assert all(r["kernel_detail"]["extra_bufts"] is False for r in by[f])
    # the reference crashed too: its twin wrote the KLD reference, which q8_0's twin read
    q8 = next(r for r in by["gguf-q8_0+path-norepack"] if r["workload"].startswith("ppl"))
    assert q8["kld_reference"] == "gguf-f16+path-norepack" and q8["kld_mean"] > 0
    assert console.count("Retrying once as") == 2
    # compare against a run where the default path worked: a fallback is a note, not a regression
    from quantbench.track.compare import compare

    base = [{**r, "format": r["format"].replace("+path-norepack", ""), "status": "ok",
             "crash_signal": None} for r in recs if "+path-" in r["format"]]
    res = compare(base, recs)
    assert not res.regressions, res.regressions
    assert sum("measured as gguf-q8_0+path-norepack instead" in n for n in res.notes) == len(workloads)
    assert "[gguf-q8_0/cpu] worker killed by SIGSEGV in llama.cpp:" in console
    assert "[gguf-q8_0/cpu] done" not in console  # the crash is said once, by the fallback line
    from quantbench.core import records
    from quantbench.report import render

    html = render.render_html(records.read_results(tmp_path / "crash.jsonl"))
    assert html.count("⚠ fallback") >= 2 and "engine crash: SIGSEGV in llama.cpp:" in html


@pytest.mark.slow
def test_kernel_fallback_off_keeps_the_failure(tmp_path, monkeypatch, capfd):
    recs, console = _run(tmp_path, monkeypatch, capfd, formats=("gguf-q4_0",), kernel_fallback=False)
    assert {r["format"] for r in recs} == {"gguf-q4_0"}
    assert recs and all(r["status"] == "failed" and r["crash_signal"] == "SIGSEGV" for r in recs)
    assert "Retrying" not in console
    from quantbench.track.compare import compare  # with no fallback measured, compare calls it

    res = compare([{**r, "status": "ok", "crash_signal": None} for r in recs], recs)
    assert len(res.regressions) == len(recs) and "ok in base, failed in new" in res.regressions[0]


@pytest.mark.slow
def test_in_process_load_avoids_a_crashing_path(tmp_path, monkeypatch):
    """pytest, a notebook: a process whose crash costs more than a variant probes the default path
    in a child first and loads the safer one when the child dies."""
    pytest.importorskip("llama_cpp")
    from quantbench.backends.gguf import GGUFBackend, extra_bufts_crash
    from quantbench.core.variant import Variant
    from quantbench.inputs.models import resolve

    tiny = resolve("tiny")
    s = Suite(name="inproc", formats=("gguf-q8_0",), n_ctx=64, prompt_lengths=(16,), gen_tokens=2)
    b = GGUFBackend(Variant(tiny.name, tiny.dir, tiny.digest, get_format("gguf-q8_0"), "cpu", 2, s))
    b.build()
    assert extra_bufts_crash(b.path, 2) is False  # this machine: the default path runs
    monkeypatch.setenv("QUANTBENCH_TEST_CRASH", "gguf:default")
    assert extra_bufts_crash(b.path, 2) is True  # the child died, this process did not
    b.load()
    try:
        assert b.kernel_path == "norepack" and "crash a batched eval" in b.info["kernel_fallback"]
        assert b.info["kernel"] == "llama.cpp:CPU"
        assert b.logits(list(range(100, 116))).shape == (16, 49152)  # batched eval, no crash
    finally:
        b.close()
    json.dumps(b.info["kernel_detail"])  # a record field: JSON as it is


class _FakeNvml:
    """pynvml with a total-energy counter that a test drives: `watts` of draw since creation."""

    def __init__(self, watts: float):
        import time

        self.watts, self.t0, self.clock = watts, time.perf_counter(), time.perf_counter

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # mJ
        return int(self.watts * (self.clock() - self.t0) * 1e3)


def test_energy_per_token_is_net_of_idle(monkeypatch):
    from quantbench.backends.dummy import DummyBackend
    from quantbench.core.variant import Variant
    from quantbench.measure import timing

    fake = _FakeNvml(60.0)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    monkeypatch.setattr(timing.EnergyMeter, "IDLE_S", 0.2)
    meter = timing.EnergyMeter("cuda:0")
    assert meter.reason == "" and meter.measure_idle() == pytest.approx(60.0, rel=0.05)
    fake.watts = 260.0  # the card under load draws 200 W above idle
    b = DummyBackend(Variant("m", "", "", get_format("dummy"), "cpu", 1, Suite(formats=("dummy",))))
    b.load()
    out = timing.time_decode(b, [1, 2, 3], 12, 3, 5.0, energy=meter)
    step_s = sum(out["decode_samples_s"]) / out["decode_tokens_timed"]
    # net J/token = 200 W x the time per token (the counter also runs between steps: within 30 %)
    assert out["decode_energy_j_per_tok"] == pytest.approx(200.0 * step_s, rel=0.3)
    assert out["decode_energy_gross_j_per_tok"] > out["decode_energy_j_per_tok"] > 0
    assert out["gpu_idle_w"] == pytest.approx(60.0, rel=0.05)
    assert out["decode_power_w"] == pytest.approx(260.0, rel=0.05)


def test_energy_skipped_names_why(monkeypatch):
    from quantbench.measure import timing

    class NoCounter(_FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, h):
            raise RuntimeError("Not Supported")

    monkeypatch.setitem(__import__("sys").modules, "pynvml", NoCounter(0))
    meter = timing.EnergyMeter("cuda")
    assert meter.read() is None and meter.measure_idle() is None
    assert timing.energy_fields("decode", 1.0, 1.0, 10, meter) == {
        "energy_reason": "NVML energy counter unavailable: RuntimeError: Not Supported"}


def test_restamp_writes_late_kernel_fields(tmp_path):
    from quantbench.core import records
    from quantbench.measure.worker import restamp

    part = tmp_path / "v.jsonl"
    base = {"schema_version": records.SCHEMA_VERSION, "model": "m", "format": "bf16", "device": "cuda",
            "status": "ok", "kernel": "torch:cuda-bf16"}
    records.append(part, [{**base, "workload": w} for w in ("load", "tg8")])
    late = {"kernel": "torch:cuda-cublas", "kernel_detail": {"cuda_kernels": [{"name": "nvjet", "pct": 90.0}]}}
    restamp(part, late)
    got = records.read(part)
    assert [r["workload"] for r in got] == ["load", "tg8"]
    assert all(r["kernel"] == "torch:cuda-cublas" and r["kernel_detail"] == late["kernel_detail"] for r in got)
    assert not list(tmp_path.glob("*.restamp"))
