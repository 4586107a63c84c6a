"""How much each GGUF block format rounds a model's 2-D weights: relative weight MSE
(Σ (dequant(quant(w)) − w)² / Σ w²) over the attention and MLP projections, by gguf-py's
quantizers (the same rounding as llama.cpp's reference C ones), plus MXFP4 with the better of two
scale exponents per block (the OCP rule's floor(log2 amax) − 2, or one more, which never clips).

    python scripts/weight_error.py ~/.cache/quantbench/models/smollm2-135m-*/

It says whether a 4-bit format's ppl miss is the format's grid or its encoder (docs/formats.md):
on the embedded SmolLM2-135M, MXFP4 rounds 1.8x as far as Q4_0 and the best-of-two-exponents
encoder wins back only 7 % of that. Light: numpy on the 2-D weights, ~30 s on 2 cores.

--controls repeats the table on two controls of the same matrices, to tell how much of a ratio
is the embedded model's own Q4_1 grid (it was dequantized from a Q4_1 GGUF, so Q4_0's uniform
16 levels land near its points and E2M1's do not): the matrices de-gridded (each weight moved by
up to half a Q4_1 step, uniformly), and Gaussian matrices with each row's standard deviation.
"""
from __future__ import annotations

import argparse
import glob

import numpy as np

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)  # the FP4 (E2M1) magnitudes, OCP MX v1.0


def mxfp4_round(blocks: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """Rounds each row of 32 weights to the nearest E2M1 code times 2^exp (that row's scale)."""
    scale = np.exp2(exp)[:, None]
    idx = np.abs(np.abs(blocks)[..., None] / scale[..., None] - E2M1).argmin(-1)
    return np.sign(blocks) * E2M1[idx] * scale


def mxfp4_best_of_two(w: np.ndarray) -> np.ndarray:
    """MXFP4 with each block's exponent the better (lower squared error) of the OCP rule's and one
    above it."""
    blocks = w.reshape(-1, 32)
    amax = np.maximum(np.abs(blocks).max(1), 1e-30)
    exp = np.floor(np.log2(amax)) - 2  # OCP: the block's largest exponent minus E2M1's emax (2)
    a, b = mxfp4_round(blocks, exp), mxfp4_round(blocks, exp + 1)
    pick = ((a - blocks) ** 2).sum(1) <= ((b - blocks) ** 2).sum(1)
    return np.where(pick[:, None], a, b).reshape(w.shape)


def degrid(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Returns w with each weight moved by U(-1/2, 1/2) of its 32-block's Q4_1 step ((max − min) / 15):
    the same distribution, off a Q4_1 grid it may have been dequantized from."""
    b = w.reshape(-1, 32)
    step = (b.max(1) - b.min(1)) / 15
    return (b + rng.uniform(-0.5, 0.5, b.shape).astype(np.float32) * step[:, None]).reshape(w.shape)


def gaussian_rows(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Returns a Gaussian matrix of w's shape with each row's standard deviation."""
    return (rng.standard_normal(w.shape) * w.std(1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a directory with the model's *.safetensors (fp32/bf16/fp16)")
    ap.add_argument("--controls", action="store_true", help="also the de-gridded and Gaussian controls")
    args = ap.parse_args()
    import gguf.quants as q
    from gguf import GGMLQuantizationType as T
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for f in sorted(glob.glob(f"{args.model_dir}/*.safetensors")):
        weights.update(load_file(f))
    mats = [w.astype(np.float32) for n, w in weights.items() if n.endswith("proj.weight")]
    if not mats:
        raise SystemExit(f"no *proj.weight tensors in {args.model_dir}/*.safetensors")
    rows = {t.name: lambda w, t=t: q.dequantize(q.quantize(w, t), t) for t in (T.Q8_0, T.Q4_0, T.Q4_1, T.MXFP4)}
    rows["MXFP4 best-of-two exponents"] = mxfp4_best_of_two
    print(f"{len(mats)} projection matrices, {sum(w.size for w in mats) / 1e6:.1f} M weights")
    rng = np.random.default_rng(0)
    sets = {"the model's weights": mats}
    if args.controls:
        sets["de-gridded (U(-1/2, 1/2) Q4_1 step)"] = [degrid(w, rng) for w in mats]
        sets["Gaussian rows (each row's std)"] = [gaussian_rows(w, rng) for w in mats]
    for label, ms in sets.items():
        den = sum(float((w ** 2).sum()) for w in ms)
        errs = {name: sum(float(((fn(w) - w) ** 2).sum()) for w in ms) / den for name, fn in rows.items()}
        print(f"{label}: MXFP4 / Q4_0 = {errs['MXFP4'] / errs['Q4_0']:.2f}")
        for name, err in errs.items():
            print(f"  {name:28s} relative weight MSE {err:.3e}")


if __name__ == "__main__":
    main()
