"""Speed of light (SoL): what a workload should reach and the fraction of it that was measured.

This is the only place that computes them. The worker writes the fields into each record
(`predict`, then `sol_fields`); the report reads them back with `sol_frac` and `suspect_reason`,
which compute them for records that carry both figures but not the fraction.

A fraction is measured ÷ predicted tok/s, the prediction being the roofline time
max(FLOPs / peak FLOP/s, bytes / bandwidth) (Williams, Waterman, Patterson, "Roofline", 2009;
formulas.predicted_fields). Nothing outruns its roofline, so a fraction above 1 says the peaks it
was computed from read low.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

# fraction field -> (measured field, predicted field)
SOL_FIELDS = {
    "prefill_sol_frac": ("prefill_tok_s", "prefill_tok_s_predicted"),
    "decode_sol_frac": ("decode_tok_s", "decode_tok_s_predicted"),
    # against the datasheet's bandwidth (GPUs in the devices table), beside the calibrated one
    "decode_sol_frac_spec": ("decode_tok_s", "decode_tok_s_predicted_spec"),
}


def predict(shape, fmt, device: str, peaks: dict | None, kind: str, info: dict | None = None,
            **kw) -> dict:
    """Returns the *_predicted fields of one workload of `fmt` on `device` at `peaks` (a
    hardware.Peaks as a dict); {} when the shape or the peaks are unknown. `kind` and `kw` are
    formulas.predicted_fields'. `info`, the backend's record fields, says what it really stored
    (bnb keeps fp32 embeddings on CPU, a GGUF file has its own type mix and KV type)."""
    if shape is None or not peaks:
        return {}
    from quantbench.arith import formulas, hardware
    from quantbench.core.formats import Layout, compute_dtypes

    info = info or {}
    # A format with a per-tensor layout is priced from it alone (the embedding table's dtype too,
    # where the table fixes it); the others take what the backend reports it stored (bnb keeps
    # fp32 embeddings on CPU, a GGUF of a type without a layout has its own mix).
    keys = () if fmt.embed_layout else ("bits_unquantized",) if fmt.layout else ("bits_per_weight",
                                                                                  "bits_unquantized")
    fmt = dataclasses.replace(fmt, **{k: info[k] for k in keys if k in info})
    if fmt.layout and info.get("weights_layout"):  # the layout the kernel repacked the linears to
        fmt = dataclasses.replace(fmt, layout=Layout(*info["weights_layout"]))
    # The peak its kernels compute at (llama.cpp and bnb's CPU int8 path are not torch GEMMs).
    return formulas.predicted_fields(shape, fmt, hardware.Peaks(**peaks), kind,
                                     compute_dtypes=compute_dtypes(fmt, device),
                                     kv_bytes_per_elem=info.get("kv_bytes_per_elem", 2),
                                     kv_pad=info.get("kv_attend_pad", 0), kv_cells=info.get("kv_cells_per_seq", 0),
                                     **kw)


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v) if math.isfinite(v) else None


def sol_frac(rec: dict, frac: str) -> float | None:
    """Returns rec's speed-of-light fraction `frac` (a SOL_FIELDS key): the one it records, else
    measured ÷ predicted when it carries both, else None."""
    if (v := _num(rec.get(frac))) is not None:
        return v
    measured, predicted = (_num(rec.get(k)) for k in SOL_FIELDS[frac])
    return measured / predicted if measured and predicted else None


def sol_fields(rec: dict) -> dict:
    """Returns the SoL fields of one measured record: each fraction it has both figures for, and
    `sol_suspect` with its reason (a fraction above 1, or a calibration taken beside other work);
    {} when it has no fraction."""
    fracs = {k: v for k in SOL_FIELDS if (v := sol_frac(rec, k)) is not None}
    if not fracs:
        return {}
    why = [f"{k} {v:.2f} > 1: " + ("faster than the datasheet allows: the devices-table row does "
                                   "not fit this GPU" if k.endswith("_spec") else
                                   "faster than the calibrated roofline, so the calibration reads "
                                   "low (taken beside other work?); rerun `quantbench devices "
                                   f"--calibrate --threads {rec.get('threads') or 0}` on a quiet "
                                   "machine")
           for k, v in fracs.items() if v > 1]
    if cal := (rec.get("peaks") or {}).get("suspect"):
        why.append(f"calibration suspect: {cal}")
    return {**fracs, "sol_suspect": bool(why), "sol_suspect_reason": "; ".join(why)}


def suspect_reason(rec: dict) -> str:
    """Returns why rec's speed-of-light fractions cannot be trusted ('' when they can): the reason
    it carries (sol_fields'), or, for a record written before that flag, any fraction above 1."""
    if isinstance(rec.get("sol_suspect_reason"), str) and rec["sol_suspect_reason"]:
        return rec["sol_suspect_reason"]
    over = [f"{k} {v:.2f}" for k in SOL_FIELDS if (v := _num(rec.get(k))) is not None and v > 1]
    return (f"{', '.join(over)} above 1: faster than its roofline, so the peaks it was computed "
            "from read low" if over else "")
