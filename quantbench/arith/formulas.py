"""Inference arithmetic: parameter counts, KV cache, FLOPs, weight bytes, the roofline. No torch.

Sources:
- Kipply, "Transformer Inference Arithmetic" (2022): KV bytes per token, k/v FLOPs, the FLOPs:bytes
  ratio of a device, memory-bound forward time, KV capacity left after the weights.
- Chowdhery et al., "PaLM" (2022), appendix B: forward FLOPs per token
  = 2·N + 4·L·T·(heads·head_dim), the training 6N + 12·L·H·Q·T divided by 3;
  Kaplan et al. (2020) table 1 counts 2·N the same way.
- Williams, Waterman, Patterson, "Roofline" (2009): time = max(FLOPs / peak, bytes / bandwidth).
- Mixture of experts: Shazeer et al. (2017), Fedus et al., "Switch Transformers" (2021), Jiang et
  al., "Mixtral of Experts" (2024): each token runs k of E experts, so active parameters are
  total − (1 − k/E) · routed-expert parameters.
- DeepSeek-AI, "DeepSeek-V2" (2024), section 2.1: multi-head latent attention caches
  (d_c + d_h^R) = kv_lora_rank + qk_rope_head_dim elements per layer per token.
- Beltagy et al., "Longformer" (2020) and Gemma Team, "Gemma 2" / "Gemma 3" (2024, 2025): a sliding
  window layer attends (and caches) at most W past tokens.
Units are in names: `_bytes`, `_s`, `_flop_s`, `_bytes_s`; counts are plain ints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations; arith stays importable without them
    from quantbench.arith.hardware import Peaks
    from quantbench.core.formats import Format

KINDS = ("pp", "tg", "ppl", "load")

# KV cache element types: bits per element, block scales included. llama.cpp's q8_0 is 32 int8
# + one fp16 scale per block (34 B / 32 = 8.5 bits), q4_0 32 4-bit codes + one fp16 scale
# (18 B / 32 = 4.5 bits); ggml-common.h block_q8_0 / block_q4_0.
KV_TYPE_BITS: dict[str, float] = {"f32": 32, "f16": 16, "bf16": 16, "fp8": 8, "q8_0": 8.5,
                                  "q4_0": 4.5}

# How an MLA model's KV cache is laid out. `latent`: the compressed c_KV plus the shared RoPE key,
# (kv_lora_rank + qk_rope_head_dim) per layer per token (DeepSeek-V2 §2.1; vLLM, llama.cpp).
# `decompressed`: per-head K (qk_nope + qk_rope) and V (v_head_dim), as transformers caches them.
KV_LAYOUTS = ("latent", "decompressed")
# Default layout per backend key (formats.Format.backend); unlisted backends decompress.
MLA_KV_LAYOUT_BY_BACKEND = {"gguf": "latent", "vllm": "latent"}


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # q/k head width; with MLA qk_nope_head_dim + qk_rope_head_dim
    d_ff: int  # the dense MLP's width (MoE models: the dense layers' width)
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    name: str = ""
    # Exact count from the real module tree (shapes.py); None means use params_by_component.
    params_total: int | None = None
    # Beyond the plain decoder, each counted exactly (tests/test_shapes.py pins them to the
    # meta-device model): q/k/v biases (qwen2), an o bias (gpt-oss), norms per block (gemma2 has
    # 4), LayerNorm biases (falcon), RMSNorm on q and k of head_dim each (qwen3, gemma3), one
    # learned sink logit per head (gpt-oss), biases on MLP/expert linears (gpt-oss).
    qkv_bias: bool = False
    norms_per_layer: int = 2
    o_bias: bool = False
    norm_bias: bool = False
    qk_norm: bool = False
    attn_sinks: bool = False
    mlp_bias: bool = False
    # Mixture of experts; n_experts 0 is a dense model. MoE layers hold a router (E × d, plus E
    # biases when router_bias), E routed experts of width d_ff_expert of which each token uses
    # n_experts_per_token, and an always-on shared expert of total width d_ff_shared.
    # n_dense_layers keep the dense MLP of d_ff (DeepSeek first_k_dense_replace).
    n_experts: int = 0
    n_experts_per_token: int = 0
    d_ff_expert: int = 0
    d_ff_shared: int = 0
    n_dense_layers: int = 0
    router_bias: bool = False
    # Multi-head latent attention (DeepSeek-V2/V3); kv_lora_rank 0 is ordinary attention.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Attention window per layer in tokens, 0 for full attention; () is full in every layer.
    windows: tuple[int, ...] = ()

    def __post_init__(self):
        who = self.name or "shape"
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{who}: {f} must be > 0, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{who}: n_heads {self.n_heads} is not a multiple "
                             f"of n_kv_heads {self.n_kv_heads}")
        if self.n_experts and not (0 < self.n_experts_per_token <= self.n_experts
                                   and self.d_ff_expert > 0):
            raise ValueError(f"{who}: an MoE needs 0 < n_experts_per_token ≤ n_experts "
                             f"({self.n_experts_per_token} of {self.n_experts}) and d_ff_expert > 0")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ValueError(f"{who}: n_dense_layers {self.n_dense_layers} is not in "
                             f"0..{self.n_layers}")
        if self.kv_lora_rank and not (0 < self.qk_rope_head_dim < self.head_dim
                                      and self.v_head_dim > 0):
            raise ValueError(f"{who}: MLA needs 0 < qk_rope_head_dim < head_dim and v_head_dim > 0")
        if self.windows and (len(self.windows) != self.n_layers or min(self.windows) < 0):
            raise ValueError(f"{who}: windows must hold one window ≥ 0 per layer "
                             f"({self.n_layers}), got {len(self.windows)}")

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.n_experts else 0


def _mlp_linear(d: int, d_ff: int, gated: bool) -> int:
    return (3 if gated else 2) * d * d_ff


def _mlp_bias(d: int, d_ff: int, gated: bool) -> int:
    return (2 * d_ff if gated else d_ff) + d  # gate+up (or up) biases, then down's


def _attn_linear_per_layer(s: ModelShape) -> int:
    """Returns one layer's attention matmul weights.

    Plain / GQA / MQA: q and o are d × H·h, k and v d × H_kv·h. MLA (DeepSeek-V2 eq. 9-14):
    q_a d × q_lora and q_b q_lora × H·h (or one q of d × H·h without q_lora), kv_a
    d × (kv_lora + rope), kv_b kv_lora × H·(nope + v), o H·v × d.
    """
    d, heads, h = s.d_model, s.n_heads, s.head_dim
    if not s.kv_lora_rank:
        return 2 * d * heads * h + 2 * d * s.n_kv_heads * h
    q = d * s.q_lora_rank + s.q_lora_rank * heads * h if s.q_lora_rank else d * heads * h
    kv = d * (s.kv_lora_rank + s.qk_rope_head_dim) \
        + s.kv_lora_rank * heads * (h - s.qk_rope_head_dim + s.v_head_dim)
    return q + kv + heads * s.v_head_dim * d


def _expert_linear(s: ModelShape) -> int:
    """Returns the matmul weights of all routed experts in all MoE layers."""
    return s.n_moe_layers * s.n_experts * _mlp_linear(s.d_model, s.d_ff_expert, s.gated_mlp)


def _expert_bias(s: ModelShape) -> int:
    if not s.mlp_bias:
        return 0
    return s.n_moe_layers * s.n_experts * _mlp_bias(s.d_model, s.d_ff_expert, s.gated_mlp)


def _block_linear_params(s: ModelShape) -> int:
    """Returns the weight count of the blocks' matmuls (attention, MLPs, experts), biases excluded.

    Routers stay out: they are E × d and kept unquantized by llama.cpp (ffn_gate_inp) and GPTQ.
    """
    dense_layers = s.n_layers - s.n_moe_layers
    mlp = dense_layers * _mlp_linear(s.d_model, s.d_ff, s.gated_mlp) \
        + s.n_moe_layers * _mlp_linear(s.d_model, s.d_ff_shared, s.gated_mlp)
    return s.n_layers * _attn_linear_per_layer(s) + mlp + _expert_linear(s)


def params_by_component(s: ModelShape) -> dict[str, int]:
    """Returns parameter counts: embeddings, attention, mlp, norms, lm_head (0 when tied), and
    for an MoE experts (routed) and router.

    Llama-style decoder: attention q,o are d_model × heads·head_dim, k,v are
    d_model × kv_heads·head_dim (MLA: see _attn_linear_per_layer); a gated MLP has 3 matrices
    d_model × d_ff (gate, up, down), a plain one 2; RMSNorm weights are d_model,
    `norms_per_layer` per block plus one final (×2 with LayerNorm biases), plus q/k norms of
    head_dim and MLA's q_lora / kv_lora norms. `mlp` holds the dense layers' MLPs and the
    shared experts; `experts` the E routed experts of every MoE layer, biases included;
    `router` E × d (+ E) per MoE layer. Position tables and biases beyond those flagged
    (gpt2, opt, phi) are not here; `params_total` from shapes.py is exact for those.
    """
    d, layers, heads, h = s.d_model, s.n_layers, s.n_heads, s.head_dim
    attn_bias = ((heads + 2 * s.n_kv_heads) * h if s.qkv_bias else 0) + (d if s.o_bias else 0)
    attn = layers * (_attn_linear_per_layer(s) + attn_bias + (heads if s.attn_sinks else 0))
    norm = 2 if s.norm_bias else 1
    norms = (layers * s.norms_per_layer + 1) * d * norm \
        + layers * (2 * h if s.qk_norm else 0) \
        + layers * (s.q_lora_rank + s.kv_lora_rank)  # MLA's q_a / kv_a RMSNorms
    dense_layers = layers - s.n_moe_layers
    bias = s.mlp_bias
    mlp = dense_layers * (_mlp_linear(d, s.d_ff, s.gated_mlp)
                          + (_mlp_bias(d, s.d_ff, s.gated_mlp) if bias else 0))
    if s.d_ff_shared:
        mlp += s.n_moe_layers * (_mlp_linear(d, s.d_ff_shared, s.gated_mlp)
                                 + (_mlp_bias(d, s.d_ff_shared, s.gated_mlp) if bias else 0))
    out = {
        "embeddings": s.vocab * d,
        "attention": attn,
        "mlp": mlp,
        "norms": norms,
        "lm_head": 0 if s.tied_embeddings else s.vocab * d,
    }
    if s.n_experts:
        out["experts"] = _expert_linear(s) + _expert_bias(s)
        out["router"] = s.n_moe_layers * s.n_experts * (d + (1 if s.router_bias else 0))
    return out


def params_total(s: ModelShape) -> int:
    """Returns the exact count when known, else the sum of params_by_component."""
    return s.params_total if s.params_total is not None else sum(params_by_component(s).values())


def params_active(s: ModelShape, embeddings: bool = True) -> int:
    """Returns the parameters one token uses: total − (1 − k/E) · routed-expert parameters.

    Each token runs k = n_experts_per_token of the E routed experts in every MoE layer (Switch
    Transformers §2; Mixtral §2.1: 46.7B total, 12.9B active). A dense model's is its total.
    Published figures differ on the embedding table, a gather that reads one row per token:
    Mixtral's 12.9B counts it, gpt-oss's 3.6B and DeepSeek-V2-Lite's 2.4B do not
    (embeddings=False drops it; a tied table stays, as it is the lm_head).
    """
    table = 0 if embeddings or s.tied_embeddings else s.vocab * s.d_model
    if not s.n_experts:
        return params_total(s) - table
    routed = _expert_linear(s) + _expert_bias(s)
    return params_total(s) - table - routed * (s.n_experts - s.n_experts_per_token) // s.n_experts


def expected_experts(n_experts: int, k: int, n_tokens: int) -> float:
    """Returns the expected number of distinct experts n_tokens route to in one MoE layer.

    Uniform, independent routing: a given expert is missed by one token with probability
    1 − k/E, by all n with (1 − k/E)^n, so E · (1 − (1 − k/E)^n) are hit (the coupon-collector
    occupancy count; each token's k picks are without replacement, which this treats as
    independent draws of probability k/E per expert). 1 token: k; many: → E. Real routers are
    skewed, so a real batch touches fewer experts than this and moves fewer bytes.
    """
    if n_experts == 0:
        return 0.0
    return n_experts * (1 - (1 - k / n_experts) ** max(n_tokens, 0))


def expert_weights_bytes(s: ModelShape, bits_experts: float, bits_unquantized: float) -> int:
    """Returns bytes of all routed experts: their matmuls at bits_experts, biases unquantized."""
    return round((_expert_linear(s) * bits_experts + _expert_bias(s) * bits_unquantized) / 8)


def embedding_gather_bytes(s: ModelShape, bits_unquantized: float) -> int:
    """Returns the bytes of an untied input embedding table (0 when tied: it is the lm_head)."""
    return 0 if s.tied_embeddings else round(s.vocab * s.d_model * bits_unquantized / 8)


def weights_read_bytes(s: ModelShape, weights_bytes: float, experts_bytes: float,
                       n_tokens: int, gather_bytes: float = 0) -> float:
    """Returns the weight bytes one forward over n_tokens reads.

    Everything once, except: the routed experts, of which the expected distinct share
    expected_experts(E, k, n) / E (uniform routing); and an untied input embedding table
    (gather_bytes), of which a lookup reads n rows, not the table (counted as 0). Decode at
    batch B routes B tokens; a prefill routes B · N tokens and so reads nearly all experts.
    """
    read = weights_bytes - gather_bytes
    if not s.n_experts:
        return read
    frac = expected_experts(s.n_experts, s.n_experts_per_token, n_tokens) / s.n_experts
    return read - experts_bytes * (1 - frac)


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int = 1,
                   batch: int = 1, bytes_per_elem: float = 2) -> int:
    """Returns KV cache bytes: 2 (K and V) · n_layers · n_kv_heads · head_dim · bytes · T · B.

    Kipply writes 2 · 2 · n_layers · d_model per token at 16-bit, which assumes
    n_heads · head_dim = d_model (MHA). With grouped-query attention only n_kv_heads are cached:
    a formula with n_heads over-counts by n_heads / n_kv_heads (3× for SmolLM2-135M: 9 vs 3;
    4× for Llama-3-8B: 32 vs 8).
    """
    return round(2 * n_layers * n_kv_heads * head_dim * bytes_per_elem * seq_len * batch)


def kv_elems_per_layer(s: ModelShape, layout: str = "decompressed") -> int:
    """Returns the KV cache elements one token adds to one layer.

    GQA / MQA: 2 · H_kv · h (K and V). MLA `latent`: kv_lora_rank + qk_rope_head_dim, the
    compressed c_KV and the decoupled RoPE key shared by all heads (DeepSeek-V2 §2.1.3: "(d_c +
    d_h^R) · l elements", 576 per layer for V2/V3); MLA `decompressed`: H · (h + v_head_dim),
    per-head K of qk_nope + qk_rope and V of v_head_dim, as transformers caches them.
    """
    if layout not in KV_LAYOUTS:
        raise ValueError(f"{s.name}: kv layout must be one of {KV_LAYOUTS}, got {layout!r}")
    if not s.kv_lora_rank:
        return 2 * s.n_kv_heads * s.head_dim
    if layout == "latent":
        return s.kv_lora_rank + s.qk_rope_head_dim
    return s.n_heads * (s.head_dim + s.v_head_dim)


# llama.cpp attends over n_kv cells per sequence, not over the tokens it holds: the cells in use
# rounded up to a multiple of 256 (at least 256), capped at the cache's cells per sequence
# (llama_kv_cache::get_n_kv in src/llama-kv-cache.cpp: "pad the n_kv value so that the graph remains
# constant across batches"). Measured on the AVX-512 EPYC (Q4_0 SmolLM2-135M, batch 1, 2 threads):
# a decode step after 128 cached tokens (n_kv 256) took 5.8 / 7.1 ms in two passes, after 256 and 384
# (n_kv 512 both) 7.8 / 8.3 and 7.5 / 8.0 ms: the step follows n_kv, not the tokens.
LLAMA_CPP_KV_PAD = 256


def attended_cells(used: int, pad: int = 0, cells: int = 0) -> int:
    """Returns the KV cells a decode step's attention iterates with `used` cells in use: `used`
    itself, or with a padding engine (pad > 0, llama.cpp: LLAMA_CPP_KV_PAD) used rounded up to a
    multiple of pad, at least pad, capped at the cache's `cells` per sequence (0: no cap).
    llama.cpp at 48 cells in use of 2176 attends 256; at 2096, 2176."""
    if pad <= 0:
        return used
    n = max(pad, -(-used // pad) * pad)
    return min(n, cells) if cells > 0 else n


def held_tokens(s: ModelShape, seq_len: int) -> int:
    """Returns the cached positions summed over layers at context seq_len: Σ_l min(T, W_l).

    A sliding-window layer keeps (and attends) only its last W tokens; a full layer all T.
    Gemma-3-27B (52 local layers of W 1024, 10 global) at T = 32,768 holds 52·1024 + 10·32,768.
    """
    if not s.windows:
        return s.n_layers * seq_len
    return sum(min(seq_len, w) if w else seq_len for w in s.windows)


def kv_bytes(s: ModelShape, seq_len: int = 1, batch: int = 1, bytes_per_elem: float = 2,
             layout: str = "decompressed") -> int:
    """Returns the KV cache bytes of a shape: elems per layer · Σ_l min(T, W_l) · bytes · B.

    Reduces to kv_cache_bytes for full attention without MLA.
    """
    return round(kv_elems_per_layer(s, layout) * held_tokens(s, seq_len) * bytes_per_elem * batch)


def _matmul_params_active(s: ModelShape) -> int:
    # lm_head is a d_model × vocab matmul even when its weight is the tied embedding table;
    # the embedding lookup itself is a gather, not a matmul. An MoE token runs k of E experts
    # and the E × d router.
    idle = _expert_linear(s) * (s.n_experts - s.n_experts_per_token) // s.n_experts \
        if s.n_experts else 0
    router = s.n_moe_layers * s.n_experts * s.d_model
    return _block_linear_params(s) - idle + router + s.vocab * s.d_model


def attn_flops_per_position(s: ModelShape, layout: str = "decompressed") -> int:
    """Returns the attention FLOPs one query spends per cached position per layer.

    QKᵀ and attention·V each cost 2 · H · head width: 4 · H · h (PaLM appendix B). MLA
    decompressed: 2 · H · (nope + rope) + 2 · H · v_head_dim; MLA latent (W_UK and W_UV absorbed
    into q and o, DeepSeek-V2 §2.1.2): 2 · H · (kv_lora + rope) + 2 · H · kv_lora, the MQA over
    576-wide keys and 512-wide values that FlashMLA computes.
    """
    if not s.kv_lora_rank:
        return 4 * s.n_heads * s.head_dim
    if layout == "latent":
        return 2 * s.n_heads * (2 * s.kv_lora_rank + s.qk_rope_head_dim)
    return 2 * s.n_heads * (s.head_dim + s.v_head_dim)


def flops_per_token(s: ModelShape, seq_len: int, layout: str = "decompressed") -> int:
    """Returns forward FLOPs for one token attending to seq_len positions.

    2 · active matmul params + attn_flops_per_position · Σ_l min(T, W_l): PaLM appendix B's
    forward third, 2 · N + 4 · L · T · H · h, with N the parameters one token uses (an MoE's
    k of E experts) and each windowed layer attending at most W positions.
    """
    return 2 * _matmul_params_active(s) + attn_flops_per_position(s, layout) * held_tokens(s, seq_len)


def _attended(n_tokens: int, n_past: int, window: int) -> int:
    """Returns Σ_{i=1..n} min(n_past + i, W): positions attended by a causal prefill of n."""
    if not window or window >= n_past + n_tokens:
        return n_tokens * n_past + n_tokens * (n_tokens + 1) // 2
    below = max(0, window - n_past)  # tokens whose context is still under the window
    return below * n_past + below * (below + 1) // 2 + (n_tokens - below) * window


def prefill_flops(s: ModelShape, n_tokens: int, n_past: int = 0,
                  layout: str = "decompressed", logits_kept: int | None = None) -> int:
    """Returns FLOPs to prefill n_tokens after n_past cached ones, causal attention summed exactly.

    Token i (1-based) attends min(n_past + i, W_l) positions in layer l, so for full attention
    this is n_tokens × flops_per_token at the mean context n_past + (n_tokens + 1) / 2. lm_head
    runs for `logits_kept` positions (default all): a serving prefill keeps only the last one
    (transformers' logits_to_keep=1, llama.cpp's batch logits flag), which on SmolLM2-135M saves
    21 % of a 512-token prefill's FLOPs.
    """
    kept = n_tokens if logits_kept is None else logits_kept
    windows = s.windows or (0,) * s.n_layers
    attended = sum(_attended(n_tokens, n_past, w) for w in windows)
    head = s.vocab * s.d_model
    return (n_tokens * 2 * (_matmul_params_active(s) - head) + kept * 2 * head
            + attn_flops_per_position(s, layout) * attended)


def weights_bytes(s: ModelShape, bits_per_weight: float, bits_unquantized: float,
                  bits_experts: float | None = None) -> int:
    """Returns bytes of weights: block linears at bits_per_weight, the rest at bits_unquantized.

    The rest (embeddings, norms, lm_head, biases, routers, position tables) is params_total minus
    the block linears, so an exact params_total from shapes.py makes this exact too.
    bits_experts, when given, prices the routed experts' matmuls apart (gpt-oss stores only
    those in MXFP4, 4.25 bits, and its attention in bf16).
    """
    linear = _block_linear_params(s)
    experts = _expert_linear(s) if bits_experts is not None else 0
    quantized = (linear - experts) * bits_per_weight + experts * (bits_experts or 0)
    return round((quantized + (params_total(s) - linear) * bits_unquantized) / 8)


def linear_shapes(s: ModelShape) -> list[tuple[int, int]]:
    """Returns (rows, cols) = (output, input features) of every block matmul of a dense model
    without MLA: per layer q, k, v, o, then gate, up (gated MLPs) and down."""
    d, q, kv = s.d_model, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    mlp = [(s.d_ff, d)] * (2 if s.gated_mlp else 1) + [(d, s.d_ff)]
    return ([(q, d), (kv, d), (kv, d), (d, q)] + mlp) * s.n_layers


def weights_bytes_of(s: ModelShape, fmt) -> int:
    """Returns bytes of weights priced tensor by tensor from a format's layouts (formats.Layout).

    Each block linear (out x in features) is stored in fmt.layout: codes plus a scale (and zero)
    per group along its rows, so a per-row scale costs 32/576 bits on a 576-wide row and 32/1536
    on a 1536-wide one. The embedding table, and an untied lm_head, are in fmt.embed_layout; the
    rest (norms, biases: params_total minus those) at fmt.other_bits. A format without a layout,
    an MoE or an MLA model: weights_bytes at bits_per_weight / bits_unquantized.
    """
    if fmt.layout is None or s.n_experts or s.kv_lora_rank:
        return weights_bytes(s, fmt.bits_per_weight, fmt.bits_unquantized)
    from quantbench.core.formats import Layout

    linears = linear_shapes(s)
    tables = 1 if s.tied_embeddings else 2
    embed = fmt.embed_layout or Layout(fmt.bits_unquantized)
    bits = sum(fmt.layout.tensor_bits(r, c) for r, c in linears) + tables * embed.tensor_bits(s.vocab, s.d_model)
    rest = params_total(s) - sum(r * c for r, c in linears) - tables * s.vocab * s.d_model
    return round((bits + rest * (fmt.other_bits or fmt.bits_unquantized)) / 8)


def linear_bits_per_weight(s: ModelShape, fmt) -> float:
    """Returns the effective bits per block-linear weight of fmt's layout on this model (scales and
    zeros included), else fmt.bits_per_weight."""
    if fmt.layout is None or s.n_experts or s.kv_lora_rank:
        return fmt.bits_per_weight
    linears = linear_shapes(s)
    return sum(fmt.layout.tensor_bits(r, c) for r, c in linears) / sum(r * c for r, c in linears)


def ops_per_byte(peak_flop_s: float, bandwidth_bytes_s: float) -> float:
    """Returns the device's FLOPs:bytes ratio; above it work is compute-bound (Kipply: A100 208)."""
    return peak_flop_s / bandwidth_bytes_s


def roofline_s(flops: float, bytes_moved: float, peak_flop_s: float,
               bandwidth_bytes_s: float) -> tuple[float, str]:
    """Returns (seconds, bound): max(FLOPs / peak, bytes / bandwidth) and which term won."""
    compute_s, memory_s = flops / peak_flop_s, bytes_moved / bandwidth_bytes_s
    return (compute_s, "compute") if compute_s > memory_s else (memory_s, "memory")


def prefill_s(s: ModelShape, n_tokens: int, weights_bytes: int, peak_flop_s: float,
              bandwidth_bytes_s: float, batch: int = 1, kv_bytes_per_elem: float = 2,
              experts_bytes: int = 0, layout: str = "decompressed",
              gather_bytes: int = 0, logits_kept: int | None = None, n_past: int = 0) -> tuple[float, str]:
    """Returns (seconds, bound) to prefill n_tokens per sequence for a batch after n_past cached.

    Reads the weights once (an MoE: the experts its batch · n_tokens tokens are expected to
    reach, weights_read_bytes) and the n_past cached tokens' KV, and writes the prompt's KV
    cache; does batch · prefill_flops (lm_head for `logits_kept` positions per sequence, default all).
    """
    flops = batch * prefill_flops(s, n_tokens, n_past, layout=layout, logits_kept=logits_kept)
    read = weights_read_bytes(s, weights_bytes, experts_bytes, batch * n_tokens, gather_bytes)
    kv = kv_bytes(s, n_past + n_tokens, batch, kv_bytes_per_elem, layout)
    return roofline_s(flops, read + kv, peak_flop_s, bandwidth_bytes_s)


def decode_s_per_token(s: ModelShape, n_ctx: int, weights_bytes: int, peak_flop_s: float,
                       bandwidth_bytes_s: float, batch: int = 1, kv_bytes_per_elem: float = 2,
                       experts_bytes: int = 0, layout: str = "decompressed",
                       gather_bytes: int = 0) -> tuple[float, str]:
    """Returns (seconds, bound) of one decode step: one new token for each of batch sequences.

    Reads the weights once (an MoE: everything but the routed experts, plus the expected
    E · (1 − (1 − k/E)^B) distinct experts per layer of experts_bytes / E each; an untied
    embedding table of gather_bytes only as the B rows looked up, not counted) plus every
    sequence's KV cache, Σ_l min(n_ctx, W_l) tokens per layer; does batch ·
    flops_per_token(n_ctx). Tokens per second across the batch is batch / seconds.
    """
    flops = batch * flops_per_token(s, n_ctx, layout)
    read = weights_read_bytes(s, weights_bytes, experts_bytes, batch, gather_bytes)
    kv = kv_bytes(s, n_ctx, batch, kv_bytes_per_elem, layout)
    return roofline_s(flops, read + kv, peak_flop_s, bandwidth_bytes_s)


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
                  n_devices: int = 1, reserve_bytes: float = 0,
                  windowed: tuple[tuple[int, float], ...] = ()) -> int | None:
    """Returns how many tokens of KV cache fit beside the weights, over all devices.

    Tensor parallel splits weights and KV n ways, so (n · (memory − reserve) − weights) / kv
    per token (Kipply: 3 × A100-40GB, 104 GB weights, 16 GB / 2 MB ≈ 8,000 tokens). Assumes
    n_kv_heads ≥ n_devices; with fewer KV heads the cache is replicated and this over-counts.
    `windowed` lists (W, bytes per token) of sliding-window layers, whose cache stops growing at
    W tokens; kv_bytes_per_token is then the full layers' share, and the answer is the longest
    context of one sequence whose cache fits. None: every layer is windowed and the capped
    cache fits, so no context length runs out of memory.
    """
    spare = n_devices * (memory_bytes - reserve_bytes) - weights_bytes
    if not windowed:
        return max(0, int(spare // kv_bytes_per_token))

    def kv(t: int) -> float:
        return t * kv_bytes_per_token + sum(min(t, w) * b for w, b in windowed)

    if kv_bytes_per_token == 0 and kv(max(w for w, _ in windowed)) <= spare:
        return None
    lo, hi = 0, 1
    while kv(hi) <= spare:  # kv grows at least kv_bytes_per_token per token past the windows
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # kv(lo) fits, kv(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kv(mid) <= spare else (lo, mid)
    return lo if kv(lo) <= spare else 0


def max_context_tokens(s: ModelShape, memory_bytes: float, weights_bytes: float,
                       bytes_per_elem: float = 2, layout: str = "decompressed",
                       n_devices: int = 1, reserve_bytes: float = 0) -> int | None:
    """Returns max_kv_tokens for a shape: its full layers per token, its windowed layers capped."""
    per_layer = kv_elems_per_layer(s, layout) * bytes_per_elem
    windows = s.windows or (0,) * s.n_layers
    full = per_layer * sum(1 for w in windows if not w)
    capped = tuple((w, per_layer) for w in windows if w)
    return max_kv_tokens(memory_bytes, weights_bytes, full, n_devices, reserve_bytes, capped)


def peak_for(peaks: Peaks, compute_dtype: str | tuple[str, ...]) -> float:
    """Returns the highest of peaks.flop_s over the named dtype(s), or the fp32 peak when the
    device has none of them."""
    names = (compute_dtype,) if isinstance(compute_dtype, str) else compute_dtype
    return max((peaks.flop_s.get(d) or 0 for d in names), default=0) or peaks.flop_s["fp32"]


def _loglog(table: dict[str, float], x: float) -> float | None:
    """Returns table ({str(x): y}) at x by log-log interpolation, the ends held flat (None: empty)."""
    grid = sorted((int(k), v) for k, v in (table or {}).items() if v > 0)
    if not grid:
        return None
    if x <= grid[0][0]:
        return grid[0][1]
    if x >= grid[-1][0]:
        return grid[-1][1]
    (x0, y0), (x1, y1) = next((a, b) for a, b in zip(grid, grid[1:], strict=False) if a[0] <= x <= b[0])
    f = math.log(x / x0) / math.log(x1 / x0)
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))


def gemm_flop_s_at(peaks: Peaks, dtypes: tuple[str, ...], m: int) -> float | None:
    """Returns the calibrated GEMM FLOP/s at M = m for the best of `dtypes`: log-log interpolation
    between the calibrated M, the ends held flat (None: no per-M calibration of those dtypes)."""
    rates = [r for d in dtypes if (r := _loglog(peaks.gemm_flop_s_by_m.get(d), m)) is not None]
    return max(rates, default=None)


def gemv_bytes_s_at(peaks: Peaks, dtypes: tuple[str, ...], width: int) -> float | None:
    """Returns the calibrated weight stream (M = 1, bytes/s) at matrices `width` wide, for the first
    of `dtypes` calibrated: log-log between the calibrated K, the ends held flat (None: none)."""
    return next((r for d in dtypes if (r := _loglog(peaks.gemv_bytes_s_by_k.get(d), width)) is not None), None)


def predicted_fields(s: ModelShape, fmt: Format, peaks: Peaks, kind: str, n_prompt: int = 0,
                     n_gen: int = 0, n_ctx: int = 0, batch: int = 1,
                     kv_bytes_per_elem: float = 2, kv_layout: str | None = None,
                     bits_experts: float | None = None, compute_dtypes: tuple[str, ...] = (),
                     depth: int = 0, kv_pad: int = 0, kv_cells: int = 0) -> dict:
    """Returns the *_predicted fields for one workload record (pp, tg, ppl or load).

    KV cache is for the context the workload holds: depth + n_prompt (pp), depth + n_prompt +
    n_gen (tg), n_ctx (ppl, load), each windowed layer capped at its window. Decode speed
    averages the step time over the decoded tokens' contexts depth + n_prompt .. depth + n_prompt
    + n_gen − 1, each step reading the weights (an MoE: the experts its batch is expected to
    reach) and that many tokens of KV (decode_step_bytes/flops_predicted are their means). TTFT
    is the prefill of the prompt (at least one token) after the depth's cached tokens. An MLA
    cache is laid out as the format's backend keeps it unless kv_layout says.
    Prefill (pp, load, TTFT) keeps the last position's logits, as every backend's prefill does;
    ppl scores every position. A decode step's attention FLOPs count the cells its kernel
    iterates (`attended_cells`: kv_pad and kv_cells are the engine's padding and cells per
    sequence; 0: the tokens held). The compute peak is the highest of `compute_dtypes`
    (formats.compute_dtypes: what the kernels really compute in), else the format's compute_dtype.
    """
    kv_layout = kv_layout or MLA_KV_LAYOUT_BY_BACKEND.get(fmt.backend, "decompressed")
    if kind not in KINDS:
        raise ValueError(f"{s.name}/{fmt.name}: kind must be one of {KINDS}, got {kind!r}")
    peak, bw = peak_for(peaks, compute_dtypes or fmt.compute_dtype), peaks.bandwidth_bytes_s
    if kind == "tg":
        # Decode at small batch is matrix-vector work, which frameworks upcast where a CPU has no
        # half-precision GEMM (fp16 decode ran at 33 tok/s here while fp16 GEMM managed 2.5
        # GFLOP/s): the dtype's GEMM peak bounds prefill, never below fp32's for decode.
        peak = max(peak, peaks.flop_s["fp32"])
    w = (weights_bytes_of(s, fmt) if bits_experts is None
         else weights_bytes(s, fmt.bits_per_weight, fmt.bits_unquantized, bits_experts))
    ex = expert_weights_bytes(s, fmt.bits_per_weight if bits_experts is None else bits_experts,
                              fmt.bits_unquantized)
    held = {"pp": depth + n_prompt, "tg": depth + n_prompt + n_gen}.get(kind, n_ctx)
    gather = embedding_gather_bytes(s, fmt.bits_unquantized)
    opts = dict(batch=batch, kv_bytes_per_elem=kv_bytes_per_elem, experts_bytes=ex,
                layout=kv_layout, gather_bytes=gather)

    def kv(t: int) -> int:
        return kv_bytes(s, t, batch, kv_bytes_per_elem, kv_layout)

    out = {"weights_bytes_predicted": w, "kv_cache_bytes_predicted": kv(held), "peak_flop_s": peak,
           "bits_per_weight_predicted": linear_bits_per_weight(s, fmt),
           "kv_cache_bytes_per_token_predicted": kv_bytes(s, 1, 1, kv_bytes_per_elem, kv_layout),
           "params": params_total(s), "n_layers": s.n_layers}
    if kind == "tg":
        ctxs = range(depth + n_prompt, depth + n_prompt + max(n_gen, 1))
        flops = sum(batch * flops_per_token(s, t, kv_layout) for t in ctxs)
        moved = sum(weights_read_bytes(s, w, ex, batch, gather) + kv(t) for t in ctxs)
        step_s = sum(decode_s_per_token(s, t, w, peak, bw, **opts)[0] for t in ctxs) / len(ctxs)
        out["flops_per_token"] = flops // (batch * len(ctxs))
        out["decode_tok_s_predicted"] = batch / step_s
        out["decode_step_bytes_predicted"] = moved / len(ctxs)
        out["decode_step_flops_predicted"] = flops / len(ctxs)
        # the step's two kinds of work, as its kernels do them (arith/fit.py prices each): the
        # batch's matmuls (M = batch rows through every weight) and attention over the cache
        # (a step after t cached tokens has t + 1 cells in use, its own token's included)
        attn = sum(batch * attn_flops_per_position(s, kv_layout)
                   * held_tokens(s, attended_cells(t + 1, kv_pad, kv_cells) if kv_pad else t) for t in ctxs)
        out["decode_step_attn_flops_predicted"] = attn / len(ctxs)
        out["decode_step_matmul_flops_predicted"] = batch * 2 * _matmul_params_active(s)
        names = tuple(compute_dtypes or (fmt.compute_dtype,)) + ("fp32",)
        if (gemm := gemm_flop_s_at(peaks, names, batch)) is not None:
            out["decode_gemm_flop_s"] = gemm
        # the weight stream at this model's width (the size ladder's alternative prices its bytes there)
        if (gemv := gemv_bytes_s_at(peaks, names, s.d_model)) is not None:
            out["decode_gemv_bytes_s"] = gemv
        # the attention kernel runs in the format's compute dtype (bf16 SDPA on a CPU without
        # bf16 units was 8x slower than fp32's): its own figure, fp32 only where it has none
        if attn_cal := next((peaks.attn_flop_s[d] for d in names if peaks.attn_flop_s.get(d)), None):
            out["attn_flop_s_calibrated"] = attn_cal
        # Kipply's knee for this model and format: bytes and FLOPs per weight over the whole model
        n = params_total(s)
        out["knee_batch_predicted"] = knee_batch(peak, bw, w / n, 2 * _matmul_params_active(s) / n)
        bound = decode_s_per_token(s, depth + n_prompt + len(ctxs) // 2, w, peak, bw, **opts)[1]
    else:  # pp, ppl and load are one forward over their context
        past = depth if kind == "pp" else 0
        n = max(held - past, 1)
        kept = None if kind == "ppl" else 1
        flops = batch * prefill_flops(s, n, past, layout=kv_layout, logits_kept=kept)
        moved = weights_read_bytes(s, w, ex, batch * n, gather) + kv(past + n)
        out["flops_per_token"] = flops // (batch * n)
        pre_s, bound = prefill_s(s, n, w, peak, bw, **opts, logits_kept=kept, n_past=past)
        if kind == "pp":
            out["prefill_tok_s_predicted"] = batch * n / pre_s
        if kind == "load":
            bound = "memory"  # loading moves bytes; nothing is computed
    if kind in ("pp", "tg"):
        out["ttft_s_predicted"] = prefill_s(s, max(n_prompt, 1), w, peak, bw, **opts, logits_kept=1,
                                            n_past=depth)[0]
    out["arith_intensity"] = flops / moved
    out["bound"] = bound
    return out
