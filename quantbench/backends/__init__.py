"""Backends: a narrow interface and a registry of lazy "module:Class" strings.

A backend's heavy library is imported only when one of its formats is chosen, so a missing
optional dependency affects only its own variants (they become `skipped` records).
"""
from __future__ import annotations

import importlib
import os
import time

import numpy as np

from quantbench.core.variant import Variant

CONSOLE_FD_ENV = "QUANTBENCH_CONSOLE_FD"  # set by the worker while a build's output goes to a log
# Where an engine appends its own log lines (llama.cpp's log callback), so that a worker killed
# inside the engine leaves its last words for the crash record. Set by the runner per variant.
ENGINE_LOG_ENV = "QUANTBENCH_ENGINE_LOG"
# Test hook: "<backend>:<kernel path>" (path "default" or a formats.KERNEL_PATHS name) makes that
# backend kill its own process with SIGSEGV on the first batched eval on that path, as llama.cpp's
# AMX kernels do on some CPUs, so the crash handling is tested on machines that do not crash.
CRASH_HOOK_ENV = "QUANTBENCH_TEST_CRASH"
# True in a worker process, where an engine crash costs one variant (the runner retries it on a
# safer path); False elsewhere (pytest, a notebook, parity), where backends avoid a path known to crash.
ISOLATED = False


def crash_hook(backend: str, kernel_path: str) -> None:
    """Kills this process with SIGSEGV when the test hook names this backend and kernel path."""
    if os.environ.get(CRASH_HOOK_ENV) == f"{backend}:{kernel_path or 'default'}":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)


def say(msg: str, end: str = "\n") -> None:
    """Prints one progress line to the console, also while a build's output goes to its log."""
    os.write(int(os.environ.get(CONSOLE_FD_ENV, "1")), (msg + end).encode())


BACKENDS = {
    "hf": "quantbench.backends.hf:HFBackend",
    "bnb": "quantbench.backends.bnb:BnbBackend",
    "gptq": "quantbench.backends.gptq:GPTQBackend",
    "gguf": "quantbench.backends.gguf:GGUFBackend",
    "torchao": "quantbench.backends.torchao:TorchAOBackend",
    "hqq": "quantbench.backends.hqq:HQQBackend",
    "openvino": "quantbench.backends.openvino:OpenVINOBackend",
    "compressed-tensors": "quantbench.backends.compressed_tensors:CompressedTensorsBackend",
    "auto-round": "quantbench.backends.autoround:AutoRoundBackend",
    "dummy": "quantbench.backends.dummy:DummyBackend",
}


class Skip(Exception):
    """The variant cannot run here (library missing, kernel absent on this device): a skipped record."""


class Backend:
    """One way of running a model. Subclasses fill in the methods below; ids are HF token ids."""

    def __init__(self, variant: Variant):
        self.variant = variant  # the variant it runs: format, device, threads, suite, model paths
        self.info: dict = {}  # extra record fields: kernel, artifact, build_s, group_size, ...

    def calibration(self, n_samples: int, n_tokens: int) -> list[list[int]]:
        """Returns calibration samples drawn after the evaluation windows (never overlapping)."""
        from quantbench.inputs.corpus import calibration

        return calibration(np.load(self.variant.tokens_path), self.variant.calib_start, n_samples, n_tokens)

    def build(self) -> None:
        """Builds (or finds in the cache) this format's artifact; sets info['artifact'/'build_s']."""

    def cached_artifact(self) -> str:
        """Returns the artifact's path when build() would find it whole in the cache (or given by
        the user), else '' (not there, or this backend cannot tell without building): a fleet's
        build task asks first, in its own process, and spawns no worker for a cache hit."""
        return ""

    def load(self) -> None:
        """Loads the variant onto variant.device."""
        raise NotImplementedError

    def weights_bytes(self) -> int:
        """Returns the bytes the loaded weights occupy."""
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray:
        """Returns float32 logits [len(ids), vocab] of one window from an empty cache."""
        raise NotImplementedError

    def prefill(self, ids: list[int]) -> int:
        """Resets the cache, runs the prompt, returns the greedy next token id."""
        raise NotImplementedError

    def decode(self, token: int) -> int:
        """Feeds one token after prefill/decode, returns the greedy next token id."""
        raise NotImplementedError

    def extend(self, ids: list[int]) -> int:
        """Feeds ids after what the cache holds (no reset), returns the greedy next token id: the
        timed prefill after an untimed one fills the cache to a depth (llama-bench -d)."""
        raise Skip(f"{type(self).__name__} cannot prefill on top of a filled KV cache (depth sweeps)")

    def extend_batch(self, ids: list[int], batch: int) -> list[int]:
        """Feeds ids to each of the `batch` sequences after what they hold; returns their next tokens."""
        raise Skip(f"{type(self).__name__} cannot prefill a batch on top of a filled KV cache")

    def prefill_batch(self, ids: list[int], batch: int) -> list[int]:
        """Returns each sequence's next token after prefilling `batch` copies of ids together."""
        raise Skip(f"{type(self).__name__} has no batched decode")

    def decode_batch(self, tokens: list[int]) -> list[int]:
        """Returns the next token of every sequence after one step that feeds them `tokens`."""
        raise Skip(f"{type(self).__name__} has no batched decode")

    def kv_cache_bytes(self) -> int | None:
        """Returns bytes the KV cache holds now (after prefill), or None if unknown."""
        return None

    def sync(self) -> None:
        """Waits for queued device work (CUDA) so a timer reads real time."""

    def engine_s(self) -> float | None:
        """Returns the engine's own cumulative compute time in seconds (llama.cpp's perf counters,
        the wall time inside model.forward), or None when unknown. The harness's cost per step is
        wall time minus this."""
        return None

    def probe_kernels(self) -> bool:
        """Names the kernels that ran where naming them would disturb the timing (a CUDA profile
        leaves CUPTI attached), after the timed regions; returns True when it changed the kernel
        fields, which the worker then writes into the variant's records."""
        return False

    def build_once(self, final, what: str, make) -> None:
        """Builds this format's artifact into the cache entry `final` with make(tmp_dir) unless a
        verified one is there; sets info artifact, group_size (a format's own) and build_s (0 when
        cached), and says `what` it is doing and how long it took."""
        from quantbench.core import cache

        fmt = self.variant.format
        self.info["artifact"] = str(final)
        if fmt.group_size:
            self.info["group_size"] = fmt.group_size
        if cache.verified(final):
            self.info["build_s"] = 0.0
            return
        say(f"[quantbench] {fmt.name}: {what} ...")
        t0 = time.perf_counter()
        with cache.atomic_dir(final) as tmp:
            make(tmp)
        self.info["build_s"] = time.perf_counter() - t0
        say(f"[quantbench] {fmt.name} built in {self.info['build_s']:.1f} s -> {final}")

    def close(self) -> None:
        """Frees what load() took."""


def get_backend_class(name: str) -> type[Backend]:
    """Returns the Backend class registered under `name`, importing its module now."""
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)
