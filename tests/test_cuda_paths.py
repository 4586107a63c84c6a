"""The CUDA (and Intel GPU) path of each 2026 format, chosen by pure functions: the configs,
dtypes and kernels a CUDA device gets, checked without a GPU. Unverified on a GPU here
(docs/gpu.md); these pin what would be asked for."""
import pytest

from quantbench.backends import Skip, autoround, compressed_tensors, openvino, torchao
from quantbench.core.formats import get_format
from quantbench.core.suite import Suite


def test_torchao_on_cuda_uses_tinygemm_int4_and_bf16():
    assert torchao.config_spec("int4wo", "cuda:0", 64) == (
        "Int4WeightOnlyConfig", {"group_size": 64, "int4_packing_format": "tile_packed_to_4d"})
    assert torchao.config_spec("int4wo", "cpu", 64) == ("PrototypeInt4WeightOnlyConfig", {"group_size": 64})
    assert torchao.config_spec("w8a8", "cuda", 0) == ("Int8DynamicActivationInt8WeightConfig", {})
    assert torchao.config_spec("int8wo", "cuda", 0) == ("Int8WeightOnlyConfig", {})
    # the int8 configs run an fp32 model on CPU, bf16 on CUDA; int4 is bf16 everywhere
    assert [torchao.dtype_name(p, "cpu") for p in ("int8wo", "w8a8", "int4wo")] == ["float32", "float32", "bfloat16"]
    assert {torchao.dtype_name(p, "cuda:1") for p in ("int8wo", "w8a8", "int4wo")} == {"bfloat16"}


@pytest.mark.parametrize("param, capability, kernel", [
    ("w4a16", (8, 0), "Marlin (gptq_marlin_gemm)"),   # A100
    ("w4a16", (9, 0), "Machete"),                     # H100 / H200
    ("fp8", (8, 0), "Marlin fp8 (weight-only)"),      # no fp8 tensor cores before Ada
    ("fp8", (8, 9), "cutlass_scaled_mm (fp8)"),       # L40S
    ("fp8", (9, 0), "cutlass_scaled_mm (fp8)"),
    ("nvfp4", (9, 0), "Marlin fp4 (weight-only)"),    # fp4 tensor cores are Blackwell's
    ("nvfp4", (10, 0), "cutlass_fp4_gemm"),
    ("w8a8", (7, 5), "cutlass_scaled_mm (int8)"),
    ("w4a16", (7, 5), ""),                            # Turing: below Marlin's sm80
])
def test_vllm_kernel_for_compressed_tensors(param, capability, kernel):
    assert compressed_tensors.vllm_kernel(param, capability) == kernel


def test_compressed_tensors_cuda_formats_use_llmcompressor_presets():
    assert compressed_tensors.scheme("fp8", 0) == "FP8_DYNAMIC"
    assert compressed_tensors.scheme("nvfp4", 16) == "NVFP4A16"
    assert compressed_tensors.scheme("w4a16", 64)["weights"]["group_size"] == 64
    for name in ("ct-fp8", "ct-nvfp4"):
        fmt = get_format(name)
        assert fmt.devices == ("cuda",) and fmt.env == "compressed-tensors"
        assert fmt.param in compressed_tensors.VLLM_KERNELS


def test_openvino_devices():
    assert openvino.ov_device("cpu") == "CPU"
    assert openvino.ov_device("xpu") == "GPU" and openvino.ov_device("xpu:1") == "GPU.1"
    with pytest.raises(Skip, match="not cuda:0"):
        openvino.ov_device("cuda:0")
    assert "xpu" in get_format("openvino-int4").devices
    assert Suite(name="x", devices=("xpu",), formats=("openvino-int8",)).devices == ("xpu",)


def test_autoround_tunes_short_on_cpu_and_names_its_kernel():
    assert autoround.settings("cpu") == (20, 8, 256)
    assert autoround.settings("cuda:0") == (200, 128, 2048)  # auto-round's own defaults
    assert autoround.kernel_of("auto_round_kernel.qlinear.QuantLinearGPTQ") == (
        "ark", "fused int4 GEMM (auto-round-lib ark)")
    assert autoround.kernel_of("auto_round_extension.torch.qlinear_torch_zp.QuantLinear")[0] == "torch"
    assert autoround.kernel_of("gptqmodel.nn_modules.qlinear.marlin.MarlinQuantLinear") == (
        "marlin", "fused int4 GEMM (CUDA)")
