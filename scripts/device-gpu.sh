#!/usr/bin/env bash
# The GPU verification on a lent, offline GPU machine: unpack the kit, run the GPU suites in
# priority order, each within its own share of the time budget, render the report, copy
# everything to $OUT (results, report, run log, summary, a tarball of the build logs).
#
#   bash scripts/device-gpu.sh [BUDGET_S]        # default 540 s (a device call may run 600 s)
#
# Results accumulate in results/gpu/ (a rerun on the same warm machine resumes with --resume),
# the report is reports/gpu-latest.html; both are copied to $OUT to come back.
# QB_DEVICE=cpu QB_MODEL=tiny runs the same steps on the CPU (a dry run of this script).
set -uo pipefail
BUDGET_S=${1:-540}
DEVICE=${QB_DEVICE:-cuda}
MODEL=${QB_MODEL:-}            # empty: each suite's own model
OUT=${OUT:-/tmp/qb-out}
T0=$SECONDS
log() { echo "[device-gpu +$((SECONDS - T0))s] $*"; }
left() { echo $((BUDGET_S - (SECONDS - T0))); }

mkdir -p "$OUT" results/gpu reports
export QUANTBENCH_CACHE=${QUANTBENCH_CACHE:-/tmp/qb-cache}
if [ -f .devkit/manifest.json ]; then
  [ -d /tmp/qb-site/llama_cpp ] || python3 scripts/devkit.py unpack --target /tmp/qb-site || exit 2
  export PYTHONPATH=/tmp/qb-site:$PWD
  # llama.cpp's converter (convert_hf_to_gguf.py), which quantbench takes from the sdist: offline,
  # from the kit
  [ -d .devkit/llama-src ] && mkdir -p "$QUANTBENCH_CACHE" && cp -rn .devkit/llama-src "$QUANTBENCH_CACHE"/
else
  export PYTHONPATH=$PWD
  log "no .devkit/manifest.json: using the packages already installed"
fi
# llama.cpp's CUDA build loads cuBLAS and cudart; on these machines torch's pip CUDA libraries
# hold them (nvidia/cu13/lib), not the default library path.
NV_LIBS=$(python3 -c "import glob, site; print(':'.join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/*/lib') + glob.glob(s + '/nvidia/*/*/lib')})))")
export LD_LIBRARY_PATH=${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=passive
# the commit the tree came from (the device copy's .git may be stale): pass QUANTBENCH_GIT_COMMIT
export QUANTBENCH_VARIANT_TIMEOUT_S=${QUANTBENCH_VARIANT_TIMEOUT_S:-300}
# GPTQModel's auto choice on an H100 is Machete, whose JIT build downloads CUTLASS: offline it
# fails. Triton kernels need no build (Marlin would: ~2 min). Its GPTQ-CUDA helper is optional.
export GPTQMODEL_OFFLINE=1 GPTQMODEL_DISABLE_GPTQ_CUDA=1
KERNELS="--set gptq_kernel=${QB_GPTQ_KERNEL:-gptq_triton} --set awq_kernel=${QB_AWQ_KERNEL:-awq_gemm_triton}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__)"
  python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
  python3 -c "import bitsandbytes, gptqmodel; print('bitsandbytes', bitsandbytes.__version__, '| gptqmodel', gptqmodel.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/run.log"

# step NAME CAP_S OUTFILE quantbench-run-args...: one `quantbench run --resume`, stopped (SIGINT:
# the runner kills its worker, keeps every record written) after CAP_S or when the budget would be
# overrun, whichever comes first.
step() {
  local name=$1 cap=$2 out=$3; shift 3
  local t=$(( $(left) - 40 ))
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 30 ]; then log "$name: skipped, ${t}s left"; return; fi
  log "$name: up to ${t}s"
  timeout -s INT -k 20 "$t" python3 -m quantbench run --resume --device "$DEVICE" \
    ${MODEL:+--model "$MODEL"} --out "$out" "$@" 2>&1 | grep -v -E '░|█' | tee -a "$OUT/run.log" \
    | grep -E '^\[[^] ]+/[^] ]+\]|^\[quantbench\]|error' || true
  log "$name: $(grep -c '"status": "ok"' "$out" 2>/dev/null || echo 0) ok records in $out"
}

# In order of what the GPU issue asks first: every seed format on the embedded model (kernels,
# energy), fp16 eager vs compiled decode on a 1B shape (speed of light), the depth x batch sweep
# the step-time model is fitted and judged on, then the GPU tests with what is left.
step embedded "${QB_CAP_EMBEDDED:-270}" results/gpu/embedded-smollm2-135m.jsonl --suite suites/gpu-quick.toml $KERNELS
step shape-fp16 "${QB_CAP_COMPILED:-140}" results/gpu/shape-llama-3.2-1b.jsonl --suite suites/gpu-compiled.toml \
  --formats fp16,fp16+compiled --set decode_batches=[8]
step sweep "${QB_CAP_SWEEP:-110}" results/gpu/sweep-llama-3.2-1b.jsonl --suite suites/gpu-sweep.toml
if [ "$(left)" -gt 90 ] && [ "$DEVICE" != cpu ]; then
  log "gpu tests"
  timeout -s INT "$(( $(left) - 40 ))" python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
    2>&1 | tail -15 | tee -a "$OUT/run.log"
fi

python3 -m quantbench report results/gpu/*.jsonl -o reports/gpu-latest.html 2>&1 | tail -3
cp results/gpu/*.jsonl reports/gpu-latest.html "$OUT"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$QUANTBENCH_CACHE" logs 2>/dev/null
python3 - <<'EOF' | tee "$OUT/summary.txt"
import quantbench
df = quantbench.read_results("results/gpu/")
# decode rows and whatever did not run: the whole table is in the report and the records
df = df[df.workload.str.startswith("tg") | (df.status != "ok")]
cols = [c for c in ("model", "format", "workload", "status", "kernel", "decode_tok_s",
                    "decode_sol_frac", "decode_sol_frac_spec", "decode_energy_j_per_tok", "reason")
        if c in df]
print(df[cols].to_string(max_colwidth=40, float_format="{:.3g}".format))
EOF
log "done"
