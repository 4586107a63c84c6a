"""CPU MoE decode measured beside arith's prediction: step time and distinct experts per batch.

  python scripts/moe_decode.py --model shape:qwen3-30b-a3b@layers=4 --batches 1,4,16,64 \
      --experts grouped_mm,eager --out results/moe-decode.jsonl

The model is built from its config with random weights (transformers' init, bf16) and decoded
with random tokens, so its router is near-uniform: the case E · (1 − (1 − k/E)^B) assumes. For
each batch B it prefills --prompt tokens per sequence, then times --steps decode steps (one
untimed warm-up) and counts the distinct experts each MoE layer's router picked per step.
Predicted: formulas.predicted_fields(kind "tg") with this machine's calibrated peaks, as a suite
record would carry. Run under the heavy lock: it holds ~2 bytes per parameter and both cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _routers(model):
    """Returns the router modules (the ones that return top-k expert indices), in layer order."""
    return [m for name, m in model.named_modules() if name.endswith("mlp.gate")]


def measure(model, shape, batch: int, prompt: int, steps: int, impl: str) -> dict:
    """Returns one measured row: median step seconds and mean distinct experts per layer."""
    import torch

    from quantbench.arith import formulas, hardware
    from quantbench.core.formats import FORMATS

    model.set_experts_implementation(impl)
    picked: list[int] = []
    hooks = [r.register_forward_hook(lambda m, i, out: picked.append(out[2].unique().numel()))
             for r in _routers(model)]
    gen = torch.Generator().manual_seed(batch)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        ids = torch.randint(vocab, (batch, prompt), generator=gen)
        out = model(ids, use_cache=True)
        cache, times = out.past_key_values, []
        for step in range(steps + 1):  # step 0 is the warm-up
            tok = torch.randint(vocab, (batch, 1), generator=gen)
            picked.clear()
            t0 = time.perf_counter()
            model(tok, past_key_values=cache, use_cache=True)
            if step:
                times.append(time.perf_counter() - t0)
                distinct = statistics.mean(picked)
    for h in hooks:
        h.remove()
    step_s = statistics.median(times)
    pred = formulas.predicted_fields(shape, FORMATS["bf16"], hardware.local_peaks("cpu"), "tg",
                                  n_prompt=prompt, n_gen=steps, batch=batch)
    return {"batch": batch, "experts_impl": impl, "step_s": step_s,
            "decode_tok_s": batch / step_s,
            "decode_tok_s_predicted": pred["decode_tok_s_predicted"],
            "decode_sol_frac": batch / step_s / pred["decode_tok_s_predicted"],
            "experts_distinct": distinct,
            "experts_expected": formulas.expected_experts(shape.n_experts,
                                                       shape.n_experts_per_token, batch),
            "step_s_samples": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shape:qwen3-30b-a3b@layers=4")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--experts", default="grouped_mm,eager",
                   help="transformers experts implementations to time (comma-separated)")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", help="append one JSON line per row")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from quantbench.arith import formulas, shapes

    shape = shapes.shape_from_config(args.model)
    config = shapes.load_config(args.model)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    print(f"{args.model}: {formulas.params_total(shape):,} params, "
          f"{shape.n_experts} experts / {shape.n_experts_per_token} per token in "
          f"{shape.n_moe_layers} layers; built in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{'impl':>10} {'batch':>5} {'experts':>8} {'expected':>8} {'step ms':>8} "
          f"{'tok/s':>8} {'predicted':>9} {'SOL':>5}", flush=True)
    for impl in args.experts.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            row = measure(model, shape, b, args.prompt, args.steps, impl)
            row.update(model=args.model, torch_threads=torch.get_num_threads())
            print(f"{impl:>10} {b:>5} {row['experts_distinct']:>8.1f} "
                  f"{row['experts_expected']:>8.1f} {row['step_s'] * 1e3:>8.0f} "
                  f"{row['decode_tok_s']:>8.2f} {row['decode_tok_s_predicted']:>9.2f} "
                  f"{row['decode_sol_frac']:>5.2f}", flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
