"""A bare greedy loop in plain torch: the reference quantbench's transformers timings must match.

No harness: load, then per step `model(ids, past_key_values=cache)`, argmax, a perf_counter around
it. Run as `python -m quantbench.measure.bare_loop MODEL_DIR DTYPE DEVICE THREADS N_PROMPT N_GEN REPS
GEN_PROMPT`, in a fresh process as quantbench's worker is; prints one JSON line {prefill_tok_s,
decode_tok_s, ...}.
"""
from __future__ import annotations

import json
import statistics
import sys
import time


def main(model_dir: str, dtype: str, device: str, threads: int, n_prompt: int, n_gen: int,
         reps: int, gen_prompt: int = 16) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    prompt = torch.arange(1000, 1000 + n_prompt, device=device).unsqueeze(0)
    pre, steps = [], []
    with torch.inference_mode():
        for rep in range(reps + 1):  # the first repetition warms up, untimed
            t0 = time.perf_counter()
            model(input_ids=prompt, past_key_values=DynamicCache(config=model.config), logits_to_keep=1)
            sync()
            t1 = time.perf_counter()
            cache = DynamicCache(config=model.config)
            out = model(input_ids=prompt[:, :gen_prompt], past_key_values=cache, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1)
            for _ in range(n_gen - 1):
                t2 = time.perf_counter()
                tok = model(input_ids=tok[:, None], past_key_values=cache).logits[:, -1].argmax(-1)
                sync()
                t3 = time.perf_counter()
                if rep:
                    steps.append(t3 - t2)
            if rep:
                pre.append(t1 - t0)
    return {"prefill_tok_s": n_prompt / statistics.median(pre), "decode_tok_s": 1 / statistics.median(steps),
            "prefill_samples_s": pre, "decode_steps": len(steps)}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], a[1], a[2], *map(int, a[3:8]))))
