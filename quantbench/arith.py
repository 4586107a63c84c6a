"""Inference arithmetic: parameter counts, KV cache, FLOPs, weight bytes, the roofline. No torch.

Sources:
- Kipply, "Transformer Inference Arithmetic" (2022): KV bytes per token, k/v FLOPs, the FLOPs:bytes
  ratio of a device, memory-bound forward time, KV capacity left after the weights.
- Chowdhery et al., "PaLM" (2022), appendix B: forward FLOPs per token
  = 2·N + 4·L·T·(heads·head_dim), the training 6N + 12·L·H·Q·T divided by 3;
  Kaplan et al. (2020) table 1 counts 2·N the same way.
- Williams, Waterman, Patterson, "Roofline" (2009): time = max(FLOPs / peak, bytes / bandwidth).
Units are in names: `_bytes`, `_s`, `_flop_s`, `_bytes_s`; counts are plain ints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations; arith stays importable without them
    from quantbench.formats import Format
    from quantbench.hardware import Peaks

KINDS = ("pp", "tg", "ppl", "load")


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    name: str = ""
    # Exact count from the real module tree (shapes.py); None means use params_by_component.
    params_total: int | None = None
    # Beyond the plain decoder: q/k/v biases (qwen2) and norms per block (gemma2 has 4).
    qkv_bias: bool = False
    norms_per_layer: int = 2

    def __post_init__(self):
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{self.name or 'shape'}: {f} must be > 0, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name or 'shape'}: n_heads {self.n_heads} is not a multiple "
                             f"of n_kv_heads {self.n_kv_heads}")


def _block_linear_params(s: ModelShape) -> int:
    """Returns the weight count of the blocks' matmuls (q, k, v, o, MLP), biases excluded."""
    q_o = 2 * s.d_model * s.n_heads * s.head_dim
    k_v = 2 * s.d_model * s.n_kv_heads * s.head_dim  # GQA: k and v are d_model × kv·head_dim
    mlp = (3 if s.gated_mlp else 2) * s.d_model * s.d_ff
    return s.n_layers * (q_o + k_v + mlp)


def params_by_component(s: ModelShape) -> dict[str, int]:
    """Returns parameter counts: embeddings, attention, mlp, norms, lm_head (0 when tied).

    Llama-style decoder: attention q,o are d_model × heads·head_dim, k,v are
    d_model × kv_heads·head_dim; a gated MLP has 3 matrices d_model × d_ff (gate, up, down),
    a plain one 2; RMSNorm weights are d_model, `norms_per_layer` per block plus one final.
    Biases beyond q/k/v, position tables and LayerNorm biases (gpt2, opt, phi) are not here;
    `params_total` from shapes.py is exact for those.
    """
    qkv_bias = s.n_layers * (s.n_heads + 2 * s.n_kv_heads) * s.head_dim if s.qkv_bias else 0
    attn = s.n_layers * (2 * s.d_model * (s.n_heads + s.n_kv_heads) * s.head_dim) + qkv_bias
    mlp = s.n_layers * (3 if s.gated_mlp else 2) * s.d_model * s.d_ff
    return {
        "embeddings": s.vocab * s.d_model,
        "attention": attn,
        "mlp": mlp,
        "norms": (s.n_layers * s.norms_per_layer + 1) * s.d_model,
        "lm_head": 0 if s.tied_embeddings else s.vocab * s.d_model,
    }


def params_total(s: ModelShape) -> int:
    """Returns the exact count when known, else the sum of params_by_component."""
    return s.params_total if s.params_total is not None else sum(params_by_component(s).values())


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int = 1,
                   batch: int = 1, bytes_per_elem: float = 2) -> int:
    """Returns KV cache bytes: 2 (K and V) · n_layers · n_kv_heads · head_dim · bytes · T · B.

    Kipply writes 2 · 2 · n_layers · d_model per token at 16-bit, which assumes
    n_heads · head_dim = d_model (MHA). With grouped-query attention only n_kv_heads are cached:
    a formula with n_heads over-counts by n_heads / n_kv_heads (3× for SmolLM2-135M: 9 vs 3;
    4× for Llama-3-8B: 32 vs 8).
    """
    return round(2 * n_layers * n_kv_heads * head_dim * bytes_per_elem * seq_len * batch)


def kv_flops_per_token(n_layers: int, d_model: int) -> int:
    """Returns FLOPs for one token's k and v: 2 (k,v) · 2 (mul+add) · L · d² (Kipply)."""
    return 2 * 2 * n_layers * d_model * d_model


def _matmul_params(s: ModelShape) -> int:
    # lm_head is a d_model × vocab matmul even when its weight is the tied embedding table;
    # the embedding lookup itself is a gather, not a matmul.
    return _block_linear_params(s) + s.vocab * s.d_model


def flops_per_token(s: ModelShape, seq_len: int) -> int:
    """Returns forward FLOPs for one token attending to seq_len positions.

    2 · matmul params + 4 · n_layers · seq_len · n_heads · head_dim (PaLM appendix B, forward
    third): QKᵀ and attention·V each cost 2 · T · heads · head_dim per layer.
    """
    return 2 * _matmul_params(s) + 4 * s.n_layers * seq_len * s.n_heads * s.head_dim


def prefill_flops(s: ModelShape, n_tokens: int, n_past: int = 0) -> int:
    """Returns FLOPs to prefill n_tokens after n_past cached ones, causal attention summed exactly.

    Token i (1-based) attends n_past + i positions, so this is n_tokens × flops_per_token at the
    mean context n_past + (n_tokens + 1) / 2.
    """
    attended = n_tokens * n_past + n_tokens * (n_tokens + 1) // 2
    return n_tokens * 2 * _matmul_params(s) + 4 * s.n_layers * s.n_heads * s.head_dim * attended


def weights_bytes(s: ModelShape, bits_per_weight: float, bits_unquantized: float) -> int:
    """Returns bytes of weights: block linears at bits_per_weight, the rest at bits_unquantized.

    The rest (embeddings, norms, lm_head, biases, position tables) is params_total minus the
    block linears, so an exact params_total from shapes.py makes this exact too.
    """
    linear = _block_linear_params(s)
    return round((linear * bits_per_weight + (params_total(s) - linear) * bits_unquantized) / 8)


def ops_per_byte(peak_flop_s: float, bandwidth_bytes_s: float) -> float:
    """Returns the device's FLOPs:bytes ratio; above it work is compute-bound (Kipply: A100 208)."""
    return peak_flop_s / bandwidth_bytes_s


def roofline_s(flops: float, bytes_moved: float, peak_flop_s: float,
               bandwidth_bytes_s: float) -> tuple[float, str]:
    """Returns (seconds, bound): max(FLOPs / peak, bytes / bandwidth) and which term won."""
    compute_s, memory_s = flops / peak_flop_s, bytes_moved / bandwidth_bytes_s
    return (compute_s, "compute") if compute_s > memory_s else (memory_s, "memory")


def prefill_s(s: ModelShape, n_tokens: int, weights_bytes: int, peak_flop_s: float,
              bandwidth_bytes_s: float, batch: int = 1,
              kv_bytes_per_elem: float = 2, n_past: int = 0) -> tuple[float, str]:
    """Returns (seconds, bound) to prefill n_tokens per sequence for a batch after n_past cached.

    Reads the weights once and the n_past cached tokens' KV, writes the prompt's KV cache; does
    batch · prefill_flops.
    """
    flops = batch * prefill_flops(s, n_tokens, n_past)
    kv = kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim, n_past + n_tokens, batch, kv_bytes_per_elem)
    return roofline_s(flops, weights_bytes + kv, peak_flop_s, bandwidth_bytes_s)


def decode_s_per_token(s: ModelShape, n_ctx: int, weights_bytes: int, peak_flop_s: float,
                       bandwidth_bytes_s: float, batch: int = 1,
                       kv_bytes_per_elem: float = 2) -> tuple[float, str]:
    """Returns (seconds, bound) of one decode step: one new token for each of batch sequences.

    Reads the weights once plus every sequence's KV cache of n_ctx tokens; does batch ·
    flops_per_token(n_ctx). Tokens per second across the batch is batch / seconds.
    """
    flops = batch * flops_per_token(s, n_ctx)
    kv = kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim, n_ctx, batch, kv_bytes_per_elem)
    return roofline_s(flops, weights_bytes + kv, peak_flop_s, bandwidth_bytes_s)


def knee_batch(peak_flop_s: float, bandwidth_bytes_s: float, bytes_per_weight: float,
               flops_per_weight: float = 2) -> float:
    """Returns the decode batch B* where the step turns compute-bound: the device's FLOPs:byte
    ratio × bytes read per weight ÷ FLOPs per weight per sequence.

    One step reads each weight once (bytes_per_weight) and does flops_per_weight (2: multiply and
    add) with it for each of B sequences; compute time B · 2 / peak overtakes bytes / bandwidth at
    B* (KV reads ignored). Kipply: A100, 312 TFLOP/s fp16 ÷ 1.5 TB/s × 2 bytes ÷ 2 FLOPs = 208;
    a 4-bit format reads 4× fewer bytes per weight, so its knee is 4× lower.
    """
    return ops_per_byte(peak_flop_s, bandwidth_bytes_s) * bytes_per_weight / flops_per_weight


def max_kv_tokens(memory_bytes: float, weights_bytes: float, kv_bytes_per_token: float,
                  n_devices: int = 1, reserve_bytes: float = 0) -> int:
    """Returns how many tokens of KV cache fit beside the weights, over all devices.

    Tensor parallel splits weights and KV n ways, so (n · (memory − reserve) − weights) / kv
    per token (Kipply: 3 × A100-40GB, 104 GB weights, 16 GB / 2 MB ≈ 8,000 tokens). Assumes
    n_kv_heads ≥ n_devices; with fewer KV heads the cache is replicated and this over-counts.
    """
    spare = n_devices * (memory_bytes - reserve_bytes) - weights_bytes
    return max(0, int(spare // kv_bytes_per_token))


def peak_for(peaks: Peaks, compute_dtype: str) -> float:
    """Returns peaks.flop_s[compute_dtype], or the fp32 peak when the device lacks that dtype."""
    return peaks.flop_s.get(compute_dtype) or peaks.flop_s["fp32"]


def predicted_fields(s: ModelShape, fmt: Format, peaks: Peaks, kind: str, n_prompt: int = 0,
                     n_gen: int = 0, n_ctx: int = 0, batch: int = 1,
                     kv_bytes_per_elem: float = 2, depth: int = 0) -> dict:
    """Returns the *_predicted fields for one workload record (pp, tg, ppl or load).

    KV cache is for the context the workload holds: depth + n_prompt (pp), depth + n_prompt +
    n_gen (tg), n_ctx (ppl, load). Decode speed averages the step time over the decoded tokens'
    contexts depth + n_prompt .. depth + n_prompt + n_gen − 1, each step reading the weights and
    that many tokens of KV (decode_step_bytes/flops_predicted are their means). TTFT is the
    prefill of the prompt (at least one token) after the depth's cached tokens.
    """
    if kind not in KINDS:
        raise ValueError(f"{s.name}/{fmt.name}: kind must be one of {KINDS}, got {kind!r}")
    peak, bw = peak_for(peaks, fmt.compute_dtype), peaks.bandwidth_bytes_s
    if kind == "tg":
        # Decode at small batch is matrix-vector work, which frameworks upcast where a CPU has no
        # half-precision GEMM (fp16 decode ran at 33 tok/s here while fp16 GEMM managed 2.5
        # GFLOP/s): the dtype's GEMM peak bounds prefill, never below fp32's for decode.
        peak = max(peak, peaks.flop_s["fp32"])
    w = weights_bytes(s, fmt.bits_per_weight, fmt.bits_unquantized)
    held = {"pp": depth + n_prompt, "tg": depth + n_prompt + n_gen}.get(kind, n_ctx)

    def kv(t: int) -> int:
        return kv_cache_bytes(s.n_layers, s.n_kv_heads, s.head_dim, t, batch, kv_bytes_per_elem)

    out = {"weights_bytes_predicted": w, "kv_cache_bytes_predicted": kv(held), "params": params_total(s),
           "n_layers": s.n_layers}
    if kind == "tg":
        ctxs = range(depth + n_prompt, depth + n_prompt + max(n_gen, 1))
        flops = sum(batch * flops_per_token(s, t) for t in ctxs)
        moved = sum(w + kv(t) for t in ctxs)
        step_s = sum(decode_s_per_token(s, t, w, peak, bw, batch, kv_bytes_per_elem)[0]
                     for t in ctxs) / len(ctxs)
        out["flops_per_token"] = flops // (batch * len(ctxs))
        out["decode_tok_s_predicted"] = batch / step_s
        out["decode_step_bytes_predicted"] = moved / len(ctxs)
        out["decode_step_flops_predicted"] = flops / len(ctxs)
        # Kipply's knee for this model and format: bytes and FLOPs per weight over the whole model
        n = params_total(s)
        out["knee_batch_predicted"] = knee_batch(peak, bw, w / n, 2 * _matmul_params(s) / n)
        bound = decode_s_per_token(s, depth + n_prompt + len(ctxs) // 2, w, peak, bw, batch,
                                   kv_bytes_per_elem)[1]
    else:  # pp, ppl and load are one forward over their context
        past = depth if kind == "pp" else 0
        n = max(held - past, 1)
        flops = batch * prefill_flops(s, n, past)
        moved = w + kv(past + n)
        out["flops_per_token"] = flops // (batch * n)
        pre_s, bound = prefill_s(s, n, w, peak, bw, batch, kv_bytes_per_elem, past)
        if kind == "pp":
            out["prefill_tok_s_predicted"] = batch * n / pre_s
        if kind == "load":
            bound = "memory"  # loading moves bytes; nothing is computed
    if kind in ("pp", "tg"):
        out["ttft_s_predicted"] = prefill_s(s, max(n_prompt, 1), w, peak, bw, batch,
                                            kv_bytes_per_elem, depth)[0]
    out["arith_intensity"] = flops / moved
    out["bound"] = bound
    return out
