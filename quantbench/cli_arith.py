"""`quantbench estimate` and `quantbench devices`: the arithmetic from the command line.

No GPU and no weights: estimate reads a config (or a known shape), a format and a device's peaks.
"""
from __future__ import annotations

import argparse
import json

from quantbench import arith
from quantbench.hardware import DEVICES, GiB, get_peaks


def add_estimate_parser(subparsers) -> argparse.ArgumentParser:
    """Returns the `estimate` subparser, added to `subparsers` with func=cmd_estimate."""
    p = subparsers.add_parser(
        "estimate", help="predict weights, KV cache and speed-of-light from a config (no GPU)",
        description="Roofline estimate for one model × format × device. Tensor parallel over "
                    "--devices N splits weights and KV N ways; communication is not counted.")
    p.add_argument("--model", required=True,
                   help="model dir, config.json, hub id, or shape:NAME (e.g. shape:llama-3-8b)")
    p.add_argument("--format", required=True, help="a format name (see `quantbench formats`)")
    p.add_argument("--device", required=True, help="a name from `quantbench devices`, or local")
    p.add_argument("--seq-len", type=int, default=512, help="prompt / context tokens (default 512)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--devices", type=int, default=1, help="tensor-parallel devices (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_estimate)
    return p


def estimate(model, format_name: str, device: str, seq_len: int = 512, batch: int = 1,
             n_devices: int = 1) -> dict:
    """Returns the estimate record for one model × format × device (see docs/arithmetic.md)."""
    from quantbench.errors import UserError
    from quantbench.formats import get_format
    from quantbench.shapes import shape_from_config

    for flag, v in (("--seq-len", seq_len), ("--batch", batch), ("--devices", n_devices)):
        if v < 1:
            raise UserError(f"{flag} must be ≥ 1, got {v}")
    fmt, peaks = get_format(format_name), get_peaks(device)
    s = shape_from_config(model)
    # KV cache is kept in the activation dtype: fp32 models cache fp32, the rest 16-bit.
    kv_elem = 4 if fmt.bits_unquantized >= 32 else 2
    peak = arith.peak_for(peaks, fmt.compute_dtype) * n_devices
    bw = peaks.bandwidth_bytes_s * n_devices
    w = arith.weights_bytes(s, fmt.bits_per_weight, fmt.bits_unquantized)
    kv_tok = arith.kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim, 1, 1, kv_elem)
    # a serving prefill keeps the last position's logits only (as every backend's prefill does)
    pre_s, pre_bound = arith.prefill_s(s, seq_len, w, peak, bw, batch, kv_elem, logits_kept=1)
    dec_s, dec_bound = arith.decode_s_per_token(s, seq_len, w, peak, bw, batch, kv_elem)
    return {
        "model": s.name, "format": fmt.name, "device": peaks.name, "peaks_source": peaks.source,
        "seq_len": seq_len, "batch": batch, "n_devices": n_devices,
        "params": arith.params_total(s),
        "params_by_component": arith.params_by_component(s),
        "weights_bytes": w,
        "kv_bytes_per_elem": kv_elem,
        "kv_cache_bytes_per_token": kv_tok,
        "kv_cache_bytes": kv_tok * seq_len * batch,
        "flops_per_token": arith.flops_per_token(s, seq_len),
        "peak_flop_s": peak, "compute_dtype": fmt.compute_dtype,
        "bandwidth_bytes_s": bw,
        "memory_bytes": peaks.memory_bytes * n_devices,
        "device_ops_per_byte": arith.ops_per_byte(peak, bw),
        "prefill_s": pre_s, "prefill_tok_s": batch * seq_len / pre_s, "prefill_bound": pre_bound,
        "decode_s_per_token": dec_s, "decode_tok_s": batch / dec_s, "bound": dec_bound,
        "max_kv_tokens": arith.max_kv_tokens(peaks.memory_bytes, w, kv_tok, n_devices),
    }


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _secs(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x >= 1e-3 else f"{x * 1e6:.3g} µs"


def format_estimate(r: dict) -> str:
    """Returns the estimate as aligned `label  value` lines."""
    rows = [
        ("model", f"{r['model']}  ({r['params']:,} params)"),
        ("format / device",
         f"{r['format']} / {r['device']} ×{r['n_devices']} ({r['peaks_source']})"),
        ("weights", _si(r["weights_bytes"], "B")),
        ("KV cache / token", f"{r['kv_cache_bytes_per_token']:,} B"),
        (f"KV cache {r['seq_len']} × {r['batch']}", _si(r["kv_cache_bytes"], "B")),
        ("FLOPs / token", _si(r["flops_per_token"], "FLOP")),
        ("device", f"{_si(r['peak_flop_s'], 'FLOP/s')} {r['compute_dtype']}, "
                   f"{_si(r['bandwidth_bytes_s'], 'B/s')}, {r['device_ops_per_byte']:.0f} FLOP/B"),
        (f"prefill {r['seq_len']} × {r['batch']}",
         f"{_secs(r['prefill_s'])}  ({r['prefill_tok_s']:,.0f} tok/s, {r['prefill_bound']}-bound)"),
        ("decode step", f"{_secs(r['decode_s_per_token'])}  ({r['decode_tok_s']:,.1f} tok/s, "
                        f"{r['bound']}-bound)"),
        ("KV tokens that fit",
         f"{r['max_kv_tokens']:,}  (memory {r['memory_bytes'] / GiB:.1f} GiB)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_estimate(args) -> int:
    """Prints the estimate (table or --json); returns 0. UserError propagates to the CLI."""
    r = estimate(args.model, args.format, args.device, args.seq_len, args.batch, args.devices)
    print(json.dumps(r) if args.json else format_estimate(r))
    return 0


def add_devices_parser(subparsers) -> argparse.ArgumentParser:
    """Returns the `devices` subparser, added to `subparsers` with func=cmd_devices."""
    p = subparsers.add_parser("devices", help="list the spec-sheet device table")
    p.add_argument("--json", action="store_true", help="print one JSON object per device")
    p.add_argument("--calibrate", metavar="DEVICE", nargs="?", const="cpu",
                   help="re-measure this machine (cpu or cuda) and replace the cached calibration")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads to calibrate at, as the suite's `threads` (default: torch's count)")
    p.set_defaults(func=cmd_devices)
    return p


def cmd_devices(args) -> int:
    """Prints DEVICES: bf16 TFLOP/s (dense), bandwidth GB/s, memory GiB, bf16 FLOPs per byte."""
    if getattr(args, "calibrate", None):
        from quantbench.hardware import local_peaks

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
