"""AutoRound backend: W4A16 by Intel's auto-round (signed-gradient rounding, tuned block by block
on calibration text), saved in its own `auto_round` format and loaded back through transformers.

Runs in the backend environment 'auto-round' (envs.ENVS). Calibration is the embedded corpus's
tokens after the evaluation windows (Backend.calibration), never auto-round's default hub dataset.
On CPU the tuning is short (CPU_ITERS steps per block, few samples) and auto-round's own log lines
are forwarded as progress. Loading picks one of auto-round's inference backends: its `ark` CPU
kernels (auto-round-lib, `auto_round_kernel`) where they are installed and the layer fits, else a
torch QuantLinear that dequantizes the weight on every call; the record's kernel names the
QuantLinear class that was really loaded and kernel_detail keeps what auto-round logged.
"""
from __future__ import annotations

import logging

from quantbench.backends import say
from quantbench.backends.hf import SavedQuantBackend

# Settings, CPU vs CUDA: auto-round's defaults are 200 iterations over 128 x 2048 tokens (hours
# on 2 cores); on CPU a short tune keeps a build in minutes and still beats round-to-nearest.
CPU_ITERS, CPU_SAMPLES, CPU_TOKENS = 20, 8, 256
CUDA_ITERS, CUDA_SAMPLES, CUDA_TOKENS = 200, 128, 2048
EXPORT = "auto_round"  # auto-round's own packing (int32 qweight, fp16 scales, packed zeros)
LOGGER = "autoround"  # auto-round's logger name


def settings(device: str) -> tuple[int, int, int]:
    """Returns (iters, samples, tokens per sample) of the tune on device (cpu, cuda:N)."""
    return (CUDA_ITERS, CUDA_SAMPLES, CUDA_TOKENS) if device.startswith("cuda") else \
        (CPU_ITERS, CPU_SAMPLES, CPU_TOKENS)


def kernel_of(qlinear: str) -> tuple[str, str]:
    """Returns (kernel, execution) for the module path of the QuantLinear auto-round loaded."""
    low = qlinear.lower()
    if "ark" in low or "auto_round_kernel" in low:
        return "ark", "fused int4 GEMM (auto-round-lib ark)"
    if "marlin" in low or "triton" in low or "exllama" in low or "gptqmodel" in low:
        return qlinear.rpartition(".")[0].rpartition(".")[2] or qlinear, "fused int4 GEMM (CUDA)"
    return "torch", "dequantized per call"


class _Forward(logging.Handler):
    """Forwards auto-round's log lines to the console as progress, and keeps the backend lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        self.lines.append(msg)
        say(f"[auto-round] {msg[:200]}")


class AutoRoundBackend(SavedQuantBackend):
    library = "auto_round"
    install = "quantbench env build auto-round"

    def dtype(self):
        return self._torch().bfloat16

    def _version(self) -> str:
        import importlib.metadata
        import importlib.util

        from quantbench.backends import Skip

        if importlib.util.find_spec("auto_round") is None:
            raise Skip(f"{self.variant.format.name}: auto-round not installed here; {self.install}")
        return importlib.metadata.version("auto-round")

    def _quantize(self, out) -> None:
        from auto_round import AutoRound
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch, fmt = self._torch(), self.variant.format
        torch.set_num_threads(self.variant.threads)
        iters, n, tokens = settings(self.variant.device)
        samples = [torch.tensor([ids]) for ids in self.calibration(n, tokens)]
        say(f"[auto-round] {fmt.name}: {iters} iterations per block over {len(samples)} x {tokens} corpus "
            f"tokens, group {fmt.group_size}")
        model = AutoModelForCausalLM.from_pretrained(self.variant.model_dir, dtype=self.dtype())
        tok = AutoTokenizer.from_pretrained(self.variant.model_dir)
        handler = _Forward()
        logging.getLogger(LOGGER).addHandler(handler)
        try:
            ar = AutoRound(model, tok, bits=int(fmt.param), group_size=fmt.group_size, sym=True,
                           iters=iters, nsamples=len(samples), seqlen=tokens, dataset=samples,
                           batch_size=min(4, len(samples)), device_map=self.variant.device.replace("cuda:", ""),
                           # inductor compiles each block for minutes on a small CPU, longer than the tune
                           enable_torch_compile=False)
            ar.quantize_and_save(str(out), format=EXPORT)
        finally:
            logging.getLogger(LOGGER).removeHandler(handler)
        # auto-round writes into out/<model>-w4g64/: lift it to the cache entry's top
        for sub in [d for d in out.iterdir() if d.is_dir() and (d / "config.json").exists()]:
            for f in sub.iterdir():
                f.replace(out / f.name)
            sub.rmdir()
        tok.save_pretrained(str(out))

    def build(self) -> None:
        super().build()
        iters, n, tokens = settings(self.variant.device)  # a cached build was made with these too
        self.info.update(calib_iters=iters, calib_samples=n, calib_tokens=tokens)

    def quantized_layers(self, model) -> list[str]:
        return [n for n, m in model.named_modules() if hasattr(m, "qweight")]

    def load_model(self):
        handler = _Forward()
        logging.getLogger(LOGGER).addHandler(handler)
        try:
            model = super().load_model()
        finally:
            logging.getLogger(LOGGER).removeHandler(handler)
        self.logged = [m for m in handler.lines if "backend" in m.lower()][:5]
        return model

    def kernel_name(self, kernel: str, detail: dict) -> str:
        """Returns `auto-round:<ark|torch|CUDA kernel> ...` from the QuantLinear class loaded."""
        layer = next(m for m in self.model.modules() if hasattr(m, "qweight"))
        qlinear = f"{type(layer).__module__}.{type(layer).__name__}"
        name, execution = kernel_of(qlinear)
        detail.update(qlinear=qlinear, execution=execution, auto_round_log=self.logged)
        if name == "torch":
            return f"auto-round:torch dequantized per call ({kernel})"
        return f"auto-round:{name}"
