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
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from quantbench.core.errors import UserError
from quantbench.core.formats import KERNEL_PATHS, LLAMA_KV_TYPES, get_format
from quantbench.core.keys import check_rules, check_type, field_schema
from quantbench.core.keys import key as _key


@dataclass(frozen=True, order=True)
class Workload:
    """One measurement of a variant, named as llama-bench does: `load`, `pp512` (prefill 512 tokens),
    `tg64` (decode 64 tokens), `tg64x8` (decode 64 tokens of 8 sequences together), `ppl512` (quality
    on 512-token windows); `@d4096` after a name: with 4096 tokens already in the KV cache (llama-bench
    `-d`), `@t2`: on 2 threads (only when a suite sweeps threads). Parsed once from its name; str()
    gives the name back."""
    kind: str  # load, pp, tg, ppl
    tokens: int = 0  # prompt tokens (pp), decoded tokens (tg), window length (ppl)
    batch: int = 1  # sequences decoded together (tg)
    depth: int = 0  # tokens already in the KV cache before the timed region, filled untimed
    threads: int = 0  # CPU threads when the suite sweeps them; 0: the suite's one thread count

    def __post_init__(self):
        if self.kind not in ("load", "pp", "tg", "ppl"):
            raise ValueError(f"unknown workload kind {self.kind!r}")
        if self.kind != "load" and self.tokens < 1 or self.batch < 1 or self.depth < 0 or self.threads < 0:
            raise ValueError(f"degenerate workload {self!r}")

    def __str__(self) -> str:
        name = "load" if self.kind == "load" else \
            f"{self.kind}{self.tokens}" + (f"x{self.batch}" if self.batch > 1 else "")
        name += f"@d{self.depth}" if self.depth else ""
        return name + (f"@t{self.threads}" if self.threads else "")

    @classmethod
    def parse(cls, name: str) -> Workload:
        """Returns the Workload a name such as tg64x8 stands for; ValueError when it is none."""
        m = _WORKLOAD.match(str(name))
        if not m:
            raise ValueError(f"'{name}' is not a workload name (load, pp<N>, tg<N>, tg<N>x<B>, ppl<N>, "
                             "then @d<DEPTH> and @t<THREADS>)")
        threads = int(m["threads"] or 0)
        if m["load"]:
            return cls("load", threads=threads)
        return cls(m["kind"], int(m["tokens"]), int(m["batch"] or 1), int(m["depth"] or 0), threads)


OMP_WAIT_POLICIES = ("default", "passive", "active")
PLACEMENTS = ("spread", "each")
NOT_OVERRIDABLE = ("model", "models", "model_overrides", "name")  # what [model_overrides] cannot set
# Where a variant runs does not change what it measures: these keys stay out of suite_hash, so a
# suite's records compare across executors (each record names its machine: node_kind, host).
PLACEMENT_KEYS = ("placement", "node_kinds")

_WORKLOAD = re.compile(r"^(?:(?P<load>load)|(?P<kind>pp|tg|ppl)(?P<tokens>\d+)(?:x(?P<batch>\d+))?"
                       r"(?:@d(?P<depth>\d+))?)(?:@t(?P<threads>\d+))?$")


@dataclass(frozen=True)
class Suite:
    name: str = _key("default", "suite name (the file stem when read from a file); records carry it "
                     "and a hash of every setting")
    model: str = _key("embedded:smollm2-135m", "model source: `embedded:smollm2-135m`, `tiny`, a hub "
                      "id, a local HF directory, a `.gguf` file, or `shape:NAME` (random weights)")
    models: tuple[str, ...] = _key((), "several models in one run (a size ladder); each runs the whole "
                                   "suite, changed by its `model_overrides` table", unique=True)
    model_overrides: dict[str, dict] = _key({}, "`[model_overrides.\"NAME\"]` tables: suite keys set for "
                                            "one model of `models` (any key but model, models, name)")
    formats: tuple[str, ...] = _key(("fp32", "bf16", "fp16", "bnb-int8", "bnb-nf4"),
                                    "format names from `quantbench formats`", unique=True, non_empty=True,
                                    fix="name at least one (`quantbench formats` lists them)")
    devices: tuple[str, ...] = _key(("cpu",), "`cpu`, `cuda`, `cuda:N`, `xpu`/`xpu:N` (an Intel GPU: OpenVINO "
                                    "formats); crossed with formats",
                                    pattern=r"cpu|cuda|cuda:[0-9]+|xpu|xpu:[0-9]+", unique=True, non_empty=True,
                                    fix="use ['cpu'] or ['cuda']",
                                    mismatch="unknown device '{first}'; use 'cpu', 'cuda', 'cuda:N' or 'xpu' "
                                             "(an Intel GPU, for OpenVINO formats)")
    corpus: str = _key("pydoc", "`pydoc`, `wikitext2` or `file:PATH`")
    threads: int | tuple[int, ...] = _key(0, "CPU threads; 0 = physical cores; a list (`[1, 2]`) sweeps "
                                          "them: workloads get `@t<N>`, peaks are calibrated at each "
                                          "count, quality runs at the first", ge=0, unique=True)
    # Throughput (llama-bench's pp/tg): prefill lengths, decode length after a short prompt.
    prompt_lengths: tuple[int, ...] = _key((128, 512), "prefill workloads `pp<N>` (prefill of N tokens)",
                                           ge=1, unique=True)
    gen_tokens: int = _key(64, "decode workload `tg<N>`: tokens decoded after the prompt", ge=2)
    decode_batches: tuple[int, ...] = _key((), "more decode batch sizes (each ≥ 2): `tg<N>x<B>` decodes B "
                                           "copies of the prompt together, tok/s over all B (`+compiled` "
                                           "twins run batch 1 only)", ge=2, unique=True,
                                           fix="batch 1 is always measured")
    depths: tuple[int, ...] = _key((), "KV-cache depths (llama-bench `-d`): `pp<N>@d<D>` and "
                                   "`tg<N>@d<D>` run after D tokens are cached by an untimed prefill",
                                   ge=1, unique=True, fix="depth 0 is always measured")
    cross_batches_depths: bool = _key(False, "also decode every batch at every depth (memory and fill "
                                      "time grow with B × D); otherwise batched decode runs at depth 0")
    gen_prompt_tokens: int = _key(16, "prompt tokens before the timed decode", ge=1)
    # 5: the least that lets the timing gate fire (Mann-Whitney's smallest p at 3 vs 3 is 0.04 > 0.01).
    min_samples: int = _key(5, "repetitions per timing; 5 is the fewest that lets the compare gate fire "
                            "at p < 0.01 (3 vs 3 samples cannot)", ge=1)
    time_budget_s: float = _key(20.0, "seconds per timing (timed regions only: a depth point's untimed "
                                "fill is not charged); a slow kernel stops early and the record says "
                                "how many samples it timed", gt=0)
    ci_target: float = _key(0.0, "precision goal of a timing: keep sampling past `min_samples` until the "
                            "95 % CI of the median step time is within ± this fraction of it (`0.03`: "
                            "±3 %), or `max_samples` or `time_budget_s` is reached; 0 = fixed "
                            "`min_samples` repetitions (llama-bench's `-r`)", ge=0)
    max_samples: int = _key(1000, "with `ci_target`: the most timed steps (decode) or prompts (prefill) "
                            "one timing takes", ge=1)
    # Quality (llama.cpp perplexity protocol): windows of n_ctx tokens, second half scored.
    n_ctx: int = _key(512, "perplexity window in tokens (even: its second half is scored)", ge=8,
                      multiple_of=2)
    ppl_windows: int = _key(20, "perplexity windows scored", ge=1)
    quality_budget_s: float = _key(600.0, "seconds per variant for quality; windows are scored in order "
                                   "until it is spent (at least one); a variant cut short is marked "
                                   "`ppl_partial` and compared on common windows", gt=0)
    kld_tokens: int = _key(1024, "reference log-probs kept for KL-divergence", ge=0)
    # Calibration for GPTQ/AWQ, taken from corpus tokens after the evaluation windows.
    calib_samples: int = _key(128, "GPTQ calibration sequences", ge=1)
    calib_tokens: int = _key(512, "tokens per GPTQ calibration sequence", ge=1)
    awq_calib_samples: int = _key(16, "AWQ calibration sequences", ge=1)
    awq_calib_tokens: int = _key(256, "tokens per AWQ calibration sequence", ge=1)
    group_size: int = _key(128, "GPTQ/AWQ group size; falls back to 64 then 32 when it does not divide "
                           "the layer widths", ge=1)
    # On an H100 auto picks Machete, whose JIT build downloads CUTLASS.
    gptq_kernel: str = _key("auto", "GPTQModel kernel to load GPTQ with (a `BACKEND` value: "
                            "`gptq_marlin`, `gptq_triton`, …); `auto` = what GPTQModel selects; the "
                            "record's `kernel` names the class that ran")
    awq_kernel: str = _key("auto", "GPTQModel kernel to load AWQ with (`awq_gemm_triton`, `awq_marlin`, "
                           "…); `auto` = what GPTQModel selects")
    kv_types: tuple[str, ...] = _key((), "llama.cpp KV cache types (`f16`, `q8_0`, `q4_0`, `bf16`, "
                                     "`f32`): each `gguf-*` format also runs as `<format>+kv-<type>` per "
                                     "non-f16 type (K and V in that type, flash attention on)",
                                     choices=LLAMA_KV_TYPES)
    omp_wait_policy: str = _key("default", "`OMP_WAIT_POLICY` of the worker processes: `default` leaves "
                                "it unset (OpenMP spins briefly, then sleeps: what users get), `passive` "
                                "sleeps at once (kind to a shared CI machine; costs up to 3.9× in "
                                "llama.cpp decode), `active` spins; the caller's own is ignored",
                                choices=OMP_WAIT_POLICIES)
    kernel_paths: tuple[str, ...] = _key((), "engine kernel paths to cross every format with "
                                         "(`norepack`, `noamx`, `avx2`; see formats): each format whose "
                                         "backend offers a path also runs as `<format>+path-<p>`",
                                         choices=("default", *KERNEL_PATHS))
    kernel_fallback: bool = _key(True, "a worker killed by a signal inside an engine kernel is retried "
                                 "once on the backend's safer path, both outcomes kept; `false`: the "
                                 "crash stays a failure (a CI that must fail loudly)")
    artifacts: dict[str, str] = _key({}, "an `[artifacts]` table, format name -> local path or hub id "
                                     "(GPTQ/AWQ checkpoint, GGUF file): measured instead of built")
    # Placement on a Ray cluster (`quantbench run --executor ray`; docs/fleet.md). Ignored locally.
    placement: str = _key("spread", "`--executor ray` only: `spread` sends each variant to any node of "
                          "`node_kinds` (dealt round-robin over the kinds) to finish sooner; `each` "
                          "runs the whole suite on every kind, for a machine comparison in one report",
                          choices=PLACEMENTS)
    node_kinds: tuple[str, ...] = _key((), "`--executor ray` only: Ray resources naming node kinds, a "
                                       "custom label (`qb-kind:cpu-amx`) or a GPU type "
                                       "(`accelerator_type:H100`, which also asks for one GPU); empty: "
                                       "any node that offers a `quantbench-slot`", pattern="[^:].*:.*[^:]",
                                       unique=True, mismatch="node_kinds {bad} are not Ray resource labels; "
                                       "write `qb-kind:NAME` for a CPU kind or `accelerator_type:TYPE` for a GPU")

    def __post_init__(self):
        where = f"suite '{self.name}'"
        if isinstance(self.threads, list):
            object.__setattr__(self, "threads", tuple(self.threads))
        for f in dataclasses.fields(self):
            check_rules(where, f.name, getattr(self, f.name), f.metadata)
        # What no single key's declaration says: registries, and rules between keys.
        for f in self.formats:
            get_format(f)
        if not self.thread_list or (len(self.thread_list) > 1 and 0 in self.thread_list):
            raise UserError(f"{where}: threads must be 0 (physical cores), a count >= 1, or a list of "
                            f"counts >= 1; got {self.threads!r}")
        for m, over in self.model_overrides.items():
            if m not in self.models:
                raise UserError(f"{where}: [model_overrides] names '{m}', which is not in models "
                                f"{list(self.models)}; add it there or drop the table")
            bad = [k for k in over if k in NOT_OVERRIDABLE]
            if bad:
                raise UserError(f"{where}: [model_overrides.\"{m}\"] cannot set {', '.join(bad)}")
            for k, v in over.items():  # each key's own rules now, not when that model's turn comes
                if k in _FIELDS:
                    check_rules(f'{where} [model_overrides."{m}"]', k, tuple(v) if isinstance(v, list) else v,
                                _FIELDS[k].metadata)
        if not self.ci_target < 1:
            raise UserError(f"{where}: ci_target must be a fraction in [0, 1) (0.03 = ±3 %; 0 disables), "
                            f"got {self.ci_target}")
        if self.ci_target > 0 and self.max_samples < self.min_samples:
            raise UserError(f"{where}: max_samples ({self.max_samples}) must be >= min_samples "
                            f"({self.min_samples})")
        for f in self.artifacts:
            try:
                get_format(f)
            except UserError as e:
                raise UserError(f"{where}: [artifacts] key '{f}': {e}") from None
            if get_format(f).backend in ("hf", "bnb"):
                raise UserError(f"{where}: [artifacts] '{f}': {f} is built at load time from the model; "
                                "artifacts apply to gptq-*, awq-* and gguf-* formats only")
        if self.placement == "each" and not self.node_kinds:
            raise UserError(f"{where}: placement 'each' needs node_kinds, the kinds to compare, e.g. "
                            "node_kinds = [\"qb-kind:cpu-amx\", \"accelerator_type:L4\"]")

    def omp_env(self, env: dict) -> dict:
        """Returns env with OMP_WAIT_POLICY as this suite's omp_wait_policy sets it (unset for
        "default"), whatever the caller exported: quantbench's workers and the parity tools alike."""
        env = {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"}
        if self.omp_wait_policy != "default":
            env["OMP_WAIT_POLICY"] = self.omp_wait_policy.upper()
        return env

    @property
    def thread_list(self) -> tuple[int, ...]:
        """Returns the thread counts as a tuple (a plain int is a list of one)."""
        return self.threads if isinstance(self.threads, tuple) else (self.threads,)

    def workloads(self) -> list[Workload]:
        """Returns the workloads of every variant: load, pp<N>[@d<D>]..., tg<N>[x<B>][@d<D>]...,
        ppl<N_CTX>; with several thread counts each gets @t<T> (quality only at the first)."""
        depths = (0, *self.depths)
        one = ([Workload("load")] + [Workload("pp", n, 1, d) for d in depths for n in self.prompt_lengths]
               + [Workload("tg", self.gen_tokens, b, d) for d in depths for b in (1, *self.decode_batches)
                  if d == 0 or b == 1 or self.cross_batches_depths]
               + [Workload("ppl", self.n_ctx)])
        if len(self.thread_list) == 1:
            return one
        return [dataclasses.replace(w, threads=t) for t in self.thread_list for w in one
                if w.kind != "ppl" or t == self.thread_list[0]]

    def per_model(self) -> list[Suite]:
        """Returns one single-model suite per model (`models`, else `model`), overrides applied.
        The runner stamps the records of all of them with this suite's hash."""
        if not self.models:
            return [self]
        out = []
        for m in self.models:
            over = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in self.model_overrides.get(m, {}).items()}
            try:
                out.append(dataclasses.replace(self, model=m, models=(), model_overrides={}, **over))
            except UserError as e:
                raise UserError(f"[model_overrides.\"{m}\"]: {e}") from None
        return out

    @property
    def suite_hash(self) -> str:
        """Returns a short hash of every setting, so records from different suites never mix."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in PLACEMENT_KEYS}
        blob = json.dumps(settings, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def thread_count(self, threads: int | None = None) -> int:
        """Returns the thread count to use: `threads` or the suite's first, 0 meaning the physical cores."""
        from quantbench.core.records import physical_cores

        return (self.thread_list[0] if threads is None else threads) or physical_cores()

    def with_overrides(self, **kw) -> Suite:
        """Returns a copy with the non-None keyword values replaced (CLI flags)."""
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items() if v is not None}
        return dataclasses.replace(self, **kw)


_FIELDS = {f.name: f for f in dataclasses.fields(Suite)}


def _check_key(where: str, key: str, value):
    """Raises UserError unless key is a Suite field and value has its type."""
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, list(_FIELDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{where}: unknown key '{key}'{hint}; the keys are listed in docs/suites.md")
    check_type(where, _FIELDS[key], value)
    if key == "model_overrides":
        for m, over in value.items():
            for k, v in over.items():
                _check_key(f'{where} [model_overrides."{m}"]', k, v)


def json_schema() -> dict:
    """Returns the JSON schema of a suite file (draft-04: Taplo, under Even Better TOML, reads
    that draft):
    every key of Suite, nothing else. Rules between keys (a format's name is in the registry,
    [model_overrides] names one of models, ...) are the loader's; the schema helps an editor
    complete and flag what one key says."""
    props = {f.name: field_schema(f) for f in dataclasses.fields(Suite)}
    props["model_overrides"]["additionalProperties"] = {
        "type": "object", "additionalProperties": False,
        # copies, not $ref: older Taplo resolves no JSON pointers
        "properties": {k: json.loads(json.dumps(v)) for k, v in props.items() if k not in NOT_OVERRIDABLE}}
    return {"$schema": "http://json-schema.org/draft-04/schema#",
            "title": "quantbench suite",
            "description": "A quantbench suite file (TOML). Generated from quantbench/core/suite.py by "
                           "`python -m quantbench.cli.reference`; do not edit.",
            "type": "object", "additionalProperties": False, "properties": props}


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


def shipped_suites() -> Path:
    """Returns the folder of the suites that ship with quantbench (the checkout's suites/, or the
    copy inside an installed wheel)."""
    pkg = Path(__file__).resolve().parents[1]
    return next((p for p in (pkg.parent / "suites", pkg / "suites") if p.is_dir()), pkg.parent / "suites")


def load_suite(path: str | os.PathLike) -> Suite:
    """Returns the Suite in a TOML file (a bare or suites/ name falls back to the shipped suites);
    unknown keys and wrong types raise UserError."""
    path = str(path)
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (shipped_suites() / p.name).exists():
        p = shipped_suites() / p.name
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        names = ", ".join(sorted(x.name for x in shipped_suites().glob("*.toml")))
        raise UserError(f"suite file '{path}' not found; pass a path, or one of the shipped suites in "
                        f"{shipped_suites()}: {names}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not a TOML suite; fix or replace the file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    kw = {}
    for key, value in data.items():
        _check_key(path, key, value)
        kw[key] = tuple(value) if isinstance(value, list) else value
    for fmt in kw.get("artifacts", {}):
        try:
            get_format(fmt)
        except UserError as e:
            raise UserError(f"{path}: [artifacts] key '{fmt}': {e}") from None
    kw.setdefault("name", p.stem)
    try:
        return Suite(**kw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
