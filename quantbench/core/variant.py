"""One variant (model x format x device x threads) as one typed value, from the runner to the
worker process and into the backend.

The runner makes a Variant (runner._Run.variant), writes it as JSON for the worker process
(`to_json`), the worker reads it back once (`from_json`) and hands the same value to its backend.
The first seven fields are what a backend needs to build and load; the rest say what to measure
and where the worker's inputs and outputs are, and are keyword-only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import KW_ONLY, dataclass, field

from quantbench.core.formats import Format, get_format
from quantbench.core.suite import Suite, Workload


@dataclass(frozen=True)
class Reference:
    """Where the KLD reference log-probs of a variant live: `write` them (the reference format),
    `read` them, or none (`why` says why)."""
    format: str = ""
    path: str = ""
    role: str = ""  # write, read, or "" when there is no reference
    why: str = ""


@dataclass(frozen=True)
class Variant:
    """One variant to build, load and measure, and where its inputs live."""
    model_name: str
    model_dir: str  # HF directory (safetensors + tokenizer) every format is built from
    model_digest: str
    format: Format
    device: str
    threads: int
    suite: Suite
    _: KW_ONLY
    random_weights: bool = False  # shape:NAME models: quality workloads are skipped
    workloads: tuple[Workload, ...] = ()
    data: str = ""  # .npz with the ppl windows and the prompt ids
    tokens_path: str = ""  # the whole tokenized corpus (.npy); calibration reads after the windows
    calib_start: int = 0  # first token after the evaluation windows
    corpus_key: str = ""  # cache-key part naming the tokens calibration draws from
    reference: Reference = Reference()
    partial: str = ""  # JSONL the worker appends its records to
    base: dict = field(default_factory=dict)  # fields every record of this variant carries
    peaks: dict | None = None  # calibrated peaks of the device (hardware.Peaks as a dict)
    kernel_fallback: str = ""  # why this variant runs on a safer path ('' when it was asked for)

    @property
    def artifact(self) -> str:
        """Returns the suite's pre-made artifact for this format (path or hub id), or ''."""
        return self.suite.artifacts.get(self.format.base, "")

    @property
    def tag(self) -> str:
        """Returns the console prefix of this variant's lines: '[format/device]'."""
        return f"[{self.format.name}/{self.device}]"

    def to_json(self) -> str:
        """Returns this variant as JSON: the format by name, workloads by their short names."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_"}
        d.update(format=self.format.name, suite=dataclasses.asdict(self.suite),
                 workloads=[str(w) for w in self.workloads], reference=dataclasses.asdict(self.reference))
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Variant:
        """Returns the variant `to_json` wrote."""
        d = json.loads(text)
        d["format"] = get_format(d["format"])
        d["suite"] = Suite(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["suite"].items()})
        d["workloads"] = tuple(Workload.parse(w) for w in d["workloads"])
        d["reference"] = Reference(**d["reference"])
        return cls(**d)
