"""Suites: a TOML file of lists and numbers whose cross product is the run (llama-bench style).

Every key, its type and its default is in `Suite` below; an unknown key or a wrong type is a
UserError that names the file, the key and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from quantbench.errors import UserError
from quantbench.formats import LLAMA_KV_TYPES, get_format


def physical_cores() -> int:
    """Returns the number of physical CPU cores (logical count when siblings are unknown)."""
    try:
        pairs = set()
        block: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if not line.strip():
                if "core id" in block:
                    pairs.add((block.get("physical id"), block["core id"]))
                block = {}
            elif ":" in line:
                k, v = line.split(":", 1)
                block[k.strip()] = v.strip()
        return len(pairs) or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Suite:
    name: str = "default"
    model: str = "embedded:smollm2-135m"
    formats: tuple[str, ...] = ("fp32", "bf16", "fp16", "bnb-int8", "bnb-nf4")
    devices: tuple[str, ...] = ("cpu",)
    corpus: str = "pydoc"
    threads: int = 0  # 0: physical cores
    # Throughput (llama-bench's pp/tg): prefill lengths, decode length after a short prompt.
    prompt_lengths: tuple[int, ...] = (128, 512)
    gen_tokens: int = 64
    # More decode batch sizes: B sequences decoded together, workload tg<N>x<B>, tok/s over all B.
    decode_batches: tuple[int, ...] = ()
    gen_prompt_tokens: int = 16
    min_samples: int = 3
    time_budget_s: float = 20.0
    # Quality (llama.cpp perplexity protocol): windows of n_ctx tokens, second half scored.
    n_ctx: int = 512
    ppl_windows: int = 20
    quality_budget_s: float = 600.0
    kld_tokens: int = 1024
    # Calibration for GPTQ/AWQ, taken from corpus tokens after the evaluation windows.
    calib_samples: int = 128
    calib_tokens: int = 512
    awq_calib_samples: int = 16
    awq_calib_tokens: int = 256
    group_size: int = 128
    # GPTQModel kernel (its BACKEND value, e.g. gptq_marlin, gptq_triton, awq_gemm_triton) or "auto":
    # what the library selects. On an H100 auto picks Machete, whose JIT build downloads CUTLASS.
    gptq_kernel: str = "auto"
    awq_kernel: str = "auto"
    # llama.cpp KV cache types: each gguf format also runs as `<format>+kv-<type>` per non-f16 type.
    kv_types: tuple[str, ...] = ()
    # Pre-made artifacts: format name -> local path or hub id (GPTQ/AWQ checkpoint, GGUF file).
    artifacts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        where = f"suite '{self.name}'"
        for f in self.formats:
            get_format(f)
        for d in self.devices:
            if d != "cpu" and not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
                raise UserError(f"{where}: unknown device '{d}'; use 'cpu', 'cuda' or 'cuda:N'")
        for key in ("gen_tokens", "min_samples", "n_ctx", "ppl_windows", "calib_samples",
                    "calib_tokens", "group_size", "gen_prompt_tokens"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}: {key} must be >= 1, got {getattr(self, key)}")
        if any(b < 2 for b in self.decode_batches):
            raise UserError(f"{where}: decode_batches must be >= 2 (batch 1 is always measured), "
                            f"got {list(self.decode_batches)}")
        if self.n_ctx % 2:
            raise UserError(f"{where}: n_ctx must be even (its second half is scored), got {self.n_ctx}")
        for f in self.artifacts:
            get_format(f)
        bad = [t for t in self.kv_types if t not in LLAMA_KV_TYPES]
        if bad:
            raise UserError(f"{where}: kv_types {bad} unknown; use {', '.join(LLAMA_KV_TYPES)}")

    @property
    def suite_hash(self) -> str:
        """Returns a short hash of every setting, so records from different suites never mix."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def thread_count(self) -> int:
        """Returns the thread count to use: the suite's, or the physical cores."""
        return self.threads or physical_cores()

    def with_overrides(self, **kw) -> Suite:
        """Returns a copy with the non-None keyword values replaced (CLI flags)."""
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items() if v is not None}
        return dataclasses.replace(self, **kw)


_FIELDS = {f.name: f for f in dataclasses.fields(Suite)}
EMPTY_LIST_ELEM = {"kv_types": str}


def _check_type(path: str, key: str, value, default):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        # an empty default holds ints unless listed here
        elem = type(default[0]) if default else EMPTY_LIST_ELEM.get(key, int)
        ok = isinstance(value, list) and all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
    elif isinstance(default, dict):
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    else:
        ok = isinstance(value, str)
    if not ok:
        want = type(default).__name__.replace("tuple", "list")
        raise UserError(f"{path}: key '{key}' must be a {want}, got {value!r}")


def _check_key(where: str, key: str, value):
    """Raises UserError unless key is a Suite field and value has its type."""
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, list(_FIELDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{where}: unknown key '{key}'{hint}; the keys are listed in README 'Suites'")
    f = _FIELDS[key]
    _check_type(where, key, value, f.default if f.default is not dataclasses.MISSING else f.default_factory())


def parse_sets(items: list[str]) -> dict:
    """Returns {key: value} from `KEY=VALUE` strings, VALUE read as TOML (bare words as strings)."""
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq:
            raise UserError(f"--set '{item}': expected KEY=VALUE, e.g. --set n_ctx=256")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        _check_key("--set", key.strip(), value)
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def load_suite(path: str | os.PathLike) -> Suite:
    """Returns the Suite in a TOML file; unknown keys and wrong types raise UserError."""
    path = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"suite file '{path}' not found; pick one from suites/ or pass a path") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    kw = {}
    for key, value in data.items():
        _check_key(path, key, value)
        kw[key] = tuple(value) if isinstance(value, list) else value
    kw.setdefault("name", Path(path).stem)
    return Suite(**kw)
