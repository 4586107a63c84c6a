"""Dummy backend: a seeded random low-rank bigram model in numpy, so harness tests need no torch.

Its knobs for tests: QUANTBENCH_DUMMY_CRASH=<signal number> makes load() kill its own process,
which is how the runner's crash handling is tested; QUANTBENCH_DUMMY_STEP_S=<seconds> makes every
forward that long, so fault-injection tests can kill a run in the middle of a variant;
QUANTBENCH_DUMMY_BUILD_S=<seconds> makes build() make a cached artifact that long (once per
model), so the build steps (a fleet's build tasks, RESPAWN) are tested without a quantizer.
"""
from __future__ import annotations

import os
import time

import numpy as np

from quantbench.backends import Backend


class DummyBackend(Backend):
    vocab = 1 << 16  # covers every tokenizer the tests use
    rank = 8

    def _entry(self):
        from quantbench.core import cache

        seconds = os.environ.get("QUANTBENCH_DUMMY_BUILD_S")
        return cache.entry("quant", cache.content_key(self.variant.model_digest, "dummy", seconds)) if seconds else None

    def build(self) -> None:
        if (final := self._entry()) is None:
            return

        def make(out):
            time.sleep(float(os.environ["QUANTBENCH_DUMMY_BUILD_S"]))
            (out / "weights.txt").write_text(f"dummy weights of {self.variant.model_digest}\n")

        self.build_once(final, "making the dummy artifact", make)

    def cached_artifact(self) -> str:
        from quantbench.core import cache

        final = self._entry()
        return str(final) if final is not None and cache.verified(final, quiet=True) else ""

    def load(self) -> None:
        sig = os.environ.get("QUANTBENCH_DUMMY_CRASH")
        if sig:
            os.kill(os.getpid(), int(sig))
        rng = np.random.default_rng(0)
        self.emb = rng.standard_normal((self.vocab, self.rank)).astype(np.float32)
        self.out = rng.standard_normal((self.rank, self.vocab)).astype(np.float32)
        self.info["kernel"] = "numpy bigram"
        self.last = 0
        self.n_cached = 0
        self.engine_total_s = 0.0

    def weights_bytes(self) -> int:
        return self.emb.nbytes + self.out.nbytes

    def logits(self, ids):
        t0 = time.perf_counter()
        time.sleep(float(os.environ.get("QUANTBENCH_DUMMY_STEP_S", "0")))
        out = self.emb[np.asarray(ids) % self.vocab] @ self.out
        self.engine_total_s += time.perf_counter() - t0
        return out

    def engine_s(self) -> float:
        return self.engine_total_s

    def prefill(self, ids):
        self.n_cached = len(ids)
        return int(self.logits(ids[-1:])[0].argmax())

    def decode(self, token):
        self.n_cached += 1
        return int(self.logits([token])[0].argmax())

    def extend(self, ids):
        self.n_cached += len(ids)
        return int(self.logits(ids[-1:])[0].argmax())

    def extend_batch(self, ids, batch):
        return [self.extend(ids)] * batch

    def prefill_batch(self, ids, batch):
        return [self.prefill(ids)] * batch

    def decode_batch(self, tokens):
        self.n_cached += len(tokens) - 1
        return [int(r.argmax()) for r in self.logits(tokens)]

    def kv_cache_bytes(self):
        return self.n_cached * 2 * 4
