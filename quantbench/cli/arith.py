"""`quantbench estimate` and `quantbench devices`: the arithmetic from the command line.

No GPU and no weights: estimate reads a config (or a known shape), a format and a device's peaks.
"""
from __future__ import annotations

import json

from quantbench.arith import formulas
from quantbench.arith.hardware import DEVICES, GiB, get_peaks

# Decode batches shown for an MoE: how the expected distinct experts, and so the bytes, grow.
MOE_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _default_kv_type(fmt) -> str:
    # The cache is kept in the activation dtype: fp32 models cache fp32, bf16 ones bf16;
    # llama.cpp's default cache type is f16.
    if fmt.bits_unquantized >= 32:
        return "f32"
    return "bf16" if fmt.compute_dtype == "bf16" else "f16"


def estimate(model, format_name: str | None, device: str, seq_len: int = 512, batch: int = 1,
             n_devices: int = 1, kv_type: str | None = None,
             kv_layout: str | None = None) -> dict:
    """Returns the estimate record for one model × format × device (see docs/arithmetic.md)."""
    from quantbench.arith.shapes import shape_from_config, stored_format
    from quantbench.core.errors import UserError
    from quantbench.core.formats import get_format

    for flag, v in (("--seq-len", seq_len), ("--batch", batch), ("--devices", n_devices)):
        if v < 1:
            raise UserError(f"{flag} must be ≥ 1, got {v}")
    if kv_type is not None and kv_type not in formulas.KV_TYPE_BITS:
        raise UserError(f"--kv-type {kv_type!r}: choose one of {', '.join(formulas.KV_TYPE_BITS)}")
    peaks = get_peaks(device)
    s = shape_from_config(model)
    bits_experts, format_source = None, "--format"
    if format_name:
        fmt = get_format(format_name)
    else:
        stored = stored_format(model)
        fmt, bits_experts = stored or (get_format("bf16"), None)
        format_source = "stored in the checkpoint (quantization_config)" if stored else "default"
    kv_type = kv_type or _default_kv_type(fmt)
    kv_elem = formulas.KV_TYPE_BITS[kv_type] / 8
    layout = kv_layout or formulas.MLA_KV_LAYOUT_BY_BACKEND.get(fmt.backend, "decompressed")
    peak = formulas.peak_for(peaks, fmt.compute_dtype) * n_devices
    bw = peaks.bandwidth_bytes_s * n_devices
    w = (formulas.weights_bytes_of(s, fmt) if bits_experts is None
         else formulas.weights_bytes(s, fmt.bits_per_weight, fmt.bits_unquantized, bits_experts))
    ex = formulas.expert_weights_bytes(s, bits_experts or fmt.bits_per_weight, fmt.bits_unquantized)
    gather = formulas.embedding_gather_bytes(s, fmt.bits_unquantized)
    opts = dict(kv_bytes_per_elem=kv_elem, experts_bytes=ex, layout=layout, gather_bytes=gather)
    # a serving prefill keeps the last position's logits only (as every backend's prefill does)
    pre_s, pre_bound = formulas.prefill_s(s, seq_len, w, peak, bw, batch, **opts, logits_kept=1)
    dec_s, dec_bound = formulas.decode_s_per_token(s, seq_len, w, peak, bw, batch, **opts)
    # One token's cache in every layer (what a token adds while the context is below every
    # window); kv_cache_bytes holds windowed layers at their window.
    kv_tok = round(formulas.kv_elems_per_layer(s, layout) * s.n_layers * kv_elem)
    r = {
        "model": s.name, "format": fmt.name, "format_source": format_source,
        "format_stores": fmt.stores, "device": peaks.name, "peaks_source": peaks.source,
        "seq_len": seq_len, "batch": batch, "n_devices": n_devices,
        "params": formulas.params_total(s),
        "params_active": formulas.params_active(s),
        "params_active_no_embeddings": formulas.params_active(s, embeddings=False),
        "params_by_component": formulas.params_by_component(s),
        "weights_bytes": w,
        "kv_type": kv_type,
        "kv_bytes_per_elem": kv_elem,
        "kv_layout": layout,
        "kv_cache_bytes_per_token": kv_tok,
        "kv_cache_bytes": formulas.kv_bytes(s, seq_len, batch, kv_elem, layout),
        "window_layers": sum(1 for x in s.windows if x),
        "windows": sorted(set(x for x in s.windows if x)),
        "flops_per_token": formulas.flops_per_token(s, seq_len, layout),
        "peak_flop_s": peak, "compute_dtype": fmt.compute_dtype,
        "bandwidth_bytes_s": bw,
        "memory_bytes": peaks.memory_bytes * n_devices,
        "device_ops_per_byte": formulas.ops_per_byte(peak, bw),
        "prefill_s": pre_s, "prefill_tok_s": batch * seq_len / pre_s, "prefill_bound": pre_bound,
        "decode_s_per_token": dec_s, "decode_tok_s": batch / dec_s, "bound": dec_bound,
        "max_kv_tokens": formulas.max_context_tokens(s, peaks.memory_bytes, w, kv_elem, layout,
                                                  n_devices),
    }
    if s.kv_lora_rank:
        r["kv_cache_bytes_per_token_by_layout"] = {
            lay: round(formulas.kv_elems_per_layer(s, lay) * s.n_layers * kv_elem)
            for lay in formulas.KV_LAYOUTS}
    if s.n_experts:
        r["experts"] = {"n_experts": s.n_experts, "per_token": s.n_experts_per_token,
                        "moe_layers": s.n_moe_layers, "weights_bytes": ex}
        r["moe_decode_by_batch"] = []
        for b in MOE_BATCHES:
            step_s, bound = formulas.decode_s_per_token(s, seq_len, w, peak, bw, b, **opts)
            r["moe_decode_by_batch"].append({
                "batch": b,
                "experts_expected": formulas.expected_experts(s.n_experts, s.n_experts_per_token, b),
                "weights_read_bytes": round(formulas.weights_read_bytes(s, w, ex, b, gather)),
                "decode_s_per_token": step_s, "decode_tok_s": b / step_s, "bound": bound})
    return r


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _secs(x: float) -> str:
    if x >= 1:
        return f"{x:.3g} s"
    return f"{x * 1e3:.3g} ms" if x >= 1e-3 else f"{x * 1e6:.3g} µs"


def format_estimate(r: dict) -> str:
    """Returns the estimate as aligned `label  value` lines (and an MoE's batch table)."""
    active = f", {r['params_active']:,} active" if r["params_active"] != r["params"] else ""
    fmt = r["format"] if r["format_source"] == "--format" else \
        f"{r['format']} ({r['format_stores']}; {r['format_source']})"
    kv_note = r["kv_type"]
    if r.get("kv_cache_bytes_per_token_by_layout"):
        other = ", ".join(f"{k} {v:,} B" for k, v in r["kv_cache_bytes_per_token_by_layout"].items()
                          if k != r["kv_layout"])
        kv_note += f", MLA {r['kv_layout']}; {other}"
    if r["window_layers"]:
        kv_note += f"; {r['window_layers']} layers windowed at " \
                   f"{', '.join(map(str, r['windows']))} tokens"
    fit = r["max_kv_tokens"]
    rows = [
        ("model", f"{r['model']}  ({r['params']:,} params{active})"),
        ("format / device", f"{fmt} / {r['device']} ×{r['n_devices']} ({r['peaks_source']})"),
        ("weights", _si(r["weights_bytes"], "B")),
        ("KV cache / token", f"{r['kv_cache_bytes_per_token']:,} B  ({kv_note})"),
        (f"KV cache {r['seq_len']} × {r['batch']}", _si(r["kv_cache_bytes"], "B")),
        ("FLOPs / token", _si(r["flops_per_token"], "FLOP")),
        ("device", f"{_si(r['peak_flop_s'], 'FLOP/s')} {r['compute_dtype']}, "
                   f"{_si(r['bandwidth_bytes_s'], 'B/s')}, {r['device_ops_per_byte']:.0f} FLOP/B"),
        (f"prefill {r['seq_len']} × {r['batch']}",
         f"{_secs(r['prefill_s'])}  ({r['prefill_tok_s']:,.0f} tok/s, {r['prefill_bound']}-bound)"),
        ("decode step", f"{_secs(r['decode_s_per_token'])}  ({r['decode_tok_s']:,.1f} tok/s, "
                        f"{r['bound']}-bound)"),
        ("KV tokens that fit",
         (f"{fit:,}" if fit is not None else "unbounded (every layer windowed)")
         + f"  (memory {r['memory_bytes'] / GiB:.1f} GiB)"),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if r.get("moe_decode_by_batch"):
        e = r["experts"]
        out += ["", f"MoE decode at T = {r['seq_len']}: {e['per_token']} of {e['n_experts']} "
                    f"experts per token in {e['moe_layers']} layers; a batch of B reaches "
                    f"E·(1−(1−k/E)^B) distinct experts (uniform routing)",
                f"{'batch':>5}  {'experts':>7}  {'weights read':>12}  {'step':>9}  "
                f"{'tok/s':>10}  bound"]
        for row in r["moe_decode_by_batch"]:
            out.append(f"{row['batch']:>5}  {row['experts_expected']:>7.1f}  "
                       f"{_si(row['weights_read_bytes'], 'B'):>12}  "
                       f"{_secs(row['decode_s_per_token']):>9}  {row['decode_tok_s']:>10,.1f}  "
                       f"{row['bound']}")
    return "\n".join(out)


def cmd_estimate(args) -> int:
    """Prints the estimate (table or --json); returns 0. UserError propagates to the CLI."""
    r = estimate(args.model, args.format, args.device, args.seq_len, args.batch, args.devices,
                 getattr(args, "kv_type", None), getattr(args, "kv_layout", None))
    print(json.dumps(r) if args.json else format_estimate(r))
    return 0


def cmd_devices(args) -> int:
    """Prints DEVICES: bf16 TFLOP/s (dense), bandwidth GB/s, memory GiB, bf16 FLOPs per byte."""
    if getattr(args, "calibrate", None):
        from quantbench.arith.hardware import local_peaks

        p = local_peaks(args.calibrate, refresh=True, threads=getattr(args, "threads", 0))
        flops = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in p.flop_s.items())
        kept = f"not cached: {p.suspect}" if p.suspect else "cached for later runs"
        print(f"{p.name}: {p.bandwidth_bytes_s / 1e9:.1f} GB/s, {flops} ({kept})")
        return 0
    if getattr(args, "json", False):
        for p in DEVICES.values():
            print(json.dumps({"name": p.name, "flop_s": p.flop_s, "bandwidth_bytes_s":
                              p.bandwidth_bytes_s, "memory_bytes": p.memory_bytes}))
        return 0
    print(f"{'name':<15} {'bf16 TFLOP/s':>12} {'GB/s':>6} {'mem GiB':>7} {'FLOP/B':>6}")
    for p in DEVICES.values():
        bf16 = p.flop_s.get("bf16")
        tf = f"{bf16 / 1e12:.1f}" if bf16 else "-"
        ratio = f"{bf16 / p.bandwidth_bytes_s:.0f}" if bf16 else "-"
        print(f"{p.name:<15} {tf:>12} {p.bandwidth_bytes_s / 1e9:>6.0f} "
              f"{p.memory_bytes / GiB:>7.0f} {ratio:>6}")
    print("dense (no sparsity) vendor datasheet figures; `--device local` measures this machine")
    return 0
