#!/usr/bin/env bash
# Everything one GPU session measures, in ONE device call (bench/TWIN.md "GPU session"): correctness first, then
# ptool against its PyTorch twin. Built beforehand on the development machine by scripts/build_for_device.sh.
#
#   bash bench/gpu_session.sh [BUILD_DIR]        BUILD_DIR defaults to build-device; results go to $OUT
#
# Each step has its own time limit (timeout) inside one overall budget (BUDGET_S, default 530 s, so the call ends
# well inside the tool's 10 minutes); a failing or timed-out step is recorded and the next one runs. Steps run in
# order of importance, so a slow GPU loses only the last ones. Files written to $OUT (10):
#   summary.txt           environment, one line per step (exit code, seconds), key figures and ptool/twin ratios
#   log.txt               every step's command line and stderr
#   test_kernels.txt      all [gpu] tests (parity, Hessians, optimizer), with each check's share of its tolerance
#   bench_train.jsonl     bench_train, one JSON object per preset x GEMM precision
#   torch_twin.jsonl      bench/torch_twin.py, one JSON object per preset
#   bench_cuda_ops.jsonl  bench_cuda_ops per GEMM precision
#   profile.txt           bench_train --profile, baseline bf16: per-op time, share, GB/s and TFLOP/s of a training
#                         step and of the sliding eval (what limits ptool, op by op)
#   ptool_train.txt       a short `ptool train --device cuda --preset baseline` run, a GPU-calibrated quantize,
#                         and `ptool eval --device cuda` of its checkpoint: sliding window and score-first TTT
#   twin_parity.txt       bench/twin_parity.py (the twin against ptool's CPU path, fp32) under the device's torch
#   sanitizer.txt         compute-sanitizer's memcheck over the [gpu] tests but the long ones, if time is left
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${1:-build-device}
: "${OUT:?set OUT to the folder for the results}"
BUDGET=${BUDGET_S:-530}
start=$(date +%s)
SUMMARY=$OUT/summary.txt
LOG=$OUT/log.txt
: >"$SUMMARY"
: >"$LOG"

# Common benchmark sizes and work: Muon + Adam on the GPU with bf16 Newton-Schulz as in the twin; the twin's batch
# (524,288 tokens; grad-accum 8, 16 for the 22-layer recurrent model to stay inside 80 GB with fp32 activations), a
# 262,144-target sliding-window eval at stride 64, 32 windows a batch.
# SMOKE=1 shrinks every size so that the whole script runs on the host emulator in a few minutes
# (scripts/dry_run_gpu_session.sh): it checks the commands and the summary, not the figures.
RECURRENT=${RECURRENT:-hybrid_recurrent}
SMOKE=${SMOKE:-0}
BATCH=(--batch-tokens 524288)
EVAL=(--eval-tokens 262144 --eval-stride 64 --eval-batch 32)
BENCH_STEPS=(--steps 5 --warmup 2)
TESTS="[gpu]"
SAN_TESTS="[gpu]~[long]"
OPS=(--reps 10)
# The reference's 10-minute configuration (524,288 tokens a step, 8 micro-batches on one GPU, 600 s cap, Newton-
# Schulz in bf16), cut to 4 steps: ptool train's own step time at the challenge's settings, on this repository's text.
TRAIN=(--batch-tokens 524288 --grad-accum 8 --max-seconds 600 --steps 4 --val-tokens 65536 --muon-bf16)
PROFILE_RUN=(--steps 2 --warmup 1 --eval-tokens 65536 --eval-stride 64 --eval-batch 32)
CALIB=(--calib-batches 2 --calib-batch-seqs 4)
EVAL_RUN=(--stride 64 --max-tokens 65536 --ttt-chunk 32768)
accum_of() { if [ "$1" = baseline ]; then echo 8; else echo 16; fi; }
if [ "$SMOKE" = 1 ]; then
  BATCH=(--batch-tokens 128 --seq-len 32)
  EVAL=(--eval-tokens 256 --eval-stride 16 --eval-batch 2)
  BENCH_STEPS=(--steps 1 --warmup 1)
  TESTS="cuda: device and backend basics"
  SAN_TESTS=$TESTS
  OPS=(--reps 1 --batch 1 --seq 64)
  TRAIN=(--batch-tokens 128 --seq-len 32 --grad-accum 2 --steps 1 --val-tokens 256 --muon-bf16)
  PROFILE_RUN=(--steps 1 --warmup 1 --eval-tokens 256 --eval-stride 16 --eval-batch 2)
  CALIB=(--calib-batches 1 --calib-batch-seqs 1 --calib-seq-len 32)
  EVAL_RUN=(--seq-len 32 --stride 16 --max-tokens 128 --batch-seqs 2 --ttt-chunk 64 --ttt-epochs 1 --ttt-batch-seqs 2)
  accum_of() { echo 2; }
fi

# step NAME LIMIT_S STDOUT_FILE CMD...: runs CMD under the smaller of LIMIT_S and the budget left.
step() {
  local name=$1 limit=$2 out=$3
  shift 3
  local left=$((start + BUDGET - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    printf '%-48s skipped: budget spent\n' "$name" >>"$SUMMARY"
    return
  fi
  [ "$SMOKE" = 1 ] && limit=$((limit * 5))  # the emulator is slow even at the smoke sizes
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s): $*" >>"$LOG"
  local t0 rc
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >>"$out" 2>>"$LOG"
  rc=$?
  printf '%-48s rc=%-3s %6.1fs%s\n' "$name" "$rc" "$(awk "BEGIN {print $(date +%s.%N) - $t0}")" \
    "$([ $rc = 124 ] && echo '  TIMEOUT')" >>"$SUMMARY"
  return $rc
}

# The tests open testdata/ under the source folder they were compiled in; on this machine the repo lives elsewhere.
src=$(cat "$BUILD/source_dir.txt" 2>/dev/null)
if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi

# ---- environment: the device, and whether the carried binaries find every library --------------------------
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  "$(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null)"; do
  if [ -n "$d" ] && [ -e "$d/libcublasLt.so.13" ]; then
    export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    break
  fi
done
{
  echo "gpu_session $(date -u +%FT%TZ), build $BUILD, budget ${BUDGET}s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  # clocks, power and temperature at the start and (below) at the end: a throttled GPU shows up here
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv 2>&1
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores"
  echo "torch: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1)"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  for b in ptool test_kernels bench_train bench_cuda_ops; do
    missing=$(ldd "$BUILD/$b" 2>&1 | grep 'not found' | tr -s ' \t' ' ')
    echo "ldd $b: ${missing:-all libraries found}"
  done
  echo
} >>"$SUMMARY"

bt() {  # bench_train for PRESET PRECISION LIMIT [MORE ARGS]; if it fails (not by timeout), once more without the
        # optimizer
  local common=(--preset "$1" --device "cuda:$2" "${BATCH[@]}" --grad-accum "$(accum_of "$1")" "${EVAL[@]}" "${@:4}")
  local name="bench_train $1 $2"
  [ $# -gt 3 ] && name+=" ${*:4}"
  step "$name" "$3" "$OUT/bench_train.jsonl" "$BUILD/bench_train" "${common[@]}" "${BENCH_STEPS[@]}" --muon-bf16 --json
  local rc=$?
  if [ $rc != 0 ] && [ $rc != 124 ]; then
    step "$name --optimizer none" "$3" "$OUT/bench_train.jsonl" "$BUILD/bench_train" "${common[@]}" \
      --steps 3 --warmup 1 --optimizer none --json
  fi
}
twin() {  # torch_twin for PRESET
  step "torch_twin $1" "$2" "$OUT/torch_twin.jsonl" env PYTHONUNBUFFERED=1 python3 bench/torch_twin.py \
    --preset "$1" "${BATCH[@]}" --grad-accum "$(accum_of "$1")" --steps 20 --eval-sliding "${EVAL[@]}" --json
}

# ---- 1. correctness: every [gpu] test ---------------------------------------------------------------------------
step "test_kernels [gpu]" 180 "$OUT/test_kernels.txt" sh -c '"$1" "$2" --durations yes 2>&1' _ "$BUILD/test_kernels" \
  "$TESTS"

# The twin under this machine's torch (native F.rms_norm, SDPA with enable_gqa) against ptool's CPU path, in fp32.
step "torch_twin parity fp32 (cpu)" 60 "$OUT/twin_parity.txt" python3 bench/twin_parity.py --build "$BUILD"

# ---- 2. ptool vs twin: bf16, deterministic and with atomics (the flash backward's dQ) -------------------------
bt baseline bf16 60
bt baseline bf16,nondeterministic 60
twin baseline 150
step "bench_train baseline bf16 --profile" 60 "$OUT/profile.txt" "$BUILD/bench_train" --preset baseline \
  --device cuda:bf16 "${BATCH[@]}" --grad-accum "$(accum_of baseline)" "${PROFILE_RUN[@]}" --muon-bf16 --profile
bt "$RECURRENT" bf16 90
bt "$RECURRENT" bf16,nondeterministic 90
twin "$RECURRENT" 150

# ---- 3. kernels alone, the trainer end to end, GPU calibration -----------------------------------------------
step "bench_cuda_ops bf16" 40 "$OUT/bench_cuda_ops.jsonl" "$BUILD/bench_cuda_ops" --gemm bf16 "${OPS[@]}" --json
step "bench_cuda_ops tf32" 40 "$OUT/bench_cuda_ops.jsonl" "$BUILD/bench_cuda_ops" --gemm tf32 "${OPS[@]}" --json
T=$(mktemp -d)
# A corpus of this repository's own text (no data travels): one document per paragraph.
find . -path ./build\* -prune -o \( -name '*.md' -o -name '*.cpp' -o -name '*.h' -o -name '*.py' \) -type f -print0 |
  xargs -0 cat >"$T/corpus.txt"
step "ptool data shards" 30 "$OUT/ptool_train.txt" "$BUILD/ptool" data shards "$T/corpus.txt" \
  --tokenizer testdata/tiny_sp.model --out-dir "$T/shards" --prefix c --val-docs 300 --quiet
step "ptool train baseline cuda:bf16" 90 "$OUT/ptool_train.txt" "$BUILD/ptool" train --device cuda:bf16 \
  --preset baseline \
  --train "$T/shards/c_train_*.bin" --val "$T/shards/c_val_*.bin" --tokenizer testdata/tiny_sp.model \
  "${TRAIN[@]}" --log-every 1 --out "$T/m.ptc"
step "ptool quantize gptq --device cuda" 60 "$OUT/ptool_train.txt" "$BUILD/ptool" quantize "$T/m.ptc" --preset gptq \
  --calib "$T/shards/c_train_*.bin" "${CALIB[@]}" --device cuda --dry-run
for mode in sliding ttt; do  # `ptool eval` on the device: a sliding window at stride 64, then score-first TTT
  step "ptool eval $mode cuda:bf16" 40 "$OUT/ptool_train.txt" "$BUILD/ptool" eval "$T/m.ptc" \
    --val "$T/shards/c_val_*.bin" --tokenizer testdata/tiny_sp.model --device cuda:bf16 "${EVAL_RUN[@]}" \
    $([ $mode = ttt ] && echo --ttt) --json
done

# ---- 4. if time is left: the baseline with an fp32 embedding and residual stream (what the bf16 stream buys), TF32,
# bf16 GEMMs with fp32 activations (what bf16 activation storage buys), fp32 ------------------------------------
bt baseline bf16 60 --set embed_bf16=false
bt baseline tf32 60
bt baseline bf16-gemm 60
bt baseline fp32 90
bt "$RECURRENT" fp32 120
rm -rf "$T"

# ---- 5. if time is still left: the kernels' memory accesses on the device, by compute-sanitizer ---------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$SANITIZER" ]; then
  step "compute-sanitizer memcheck [gpu]~[long]" 120 "$OUT/sanitizer.txt" "$SANITIZER" --tool memcheck \
    --error-exitcode 1 "$BUILD/test_kernels" "$SAN_TESTS"
else
  printf '%-48s skipped: no compute-sanitizer on this machine\n' "compute-sanitizer memcheck" >>"$SUMMARY"
fi
nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv >>"$SUMMARY" 2>&1

# ---- figures: per run, and ptool / twin ratios (targets: training >= 1.2x, sliding eval >= 1.5x) ---------------
python3 - "$OUT" >>"$SUMMARY" 2>&1 <<'EOF'
import json, sys, os
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return []
    res = []
    for line in open(p):
        line = line.strip()
        if line.startswith("{"):
            try:
                res.append(json.loads(line))
            except ValueError:
                pass
    return res
def f(v, fmt="%.0f"):
    return fmt % v if isinstance(v, (int, float)) else "-"
twin = {r.get("config"): r for r in rows("torch_twin.jsonl")}  # "config" is the preset's name
print("\nrun                                                train tok/s  ms/step   MFU   fwd+bwd tok/s  eval tok/s  eval MFU  peak GB")
for r in rows("torch_twin.jsonl"):
    print("twin %-45s %11s %8s %5s %14s %11s %9s %8s" % (
        r.get("config"), f(r.get("tokens_per_s")), f(r.get("ms_per_step"), "%.1f"), f(r.get("mfu"), "%.3f"), "-",
        f(r.get("eval_tokens_per_s")), f(r.get("eval_mfu"), "%.3f"), f(r.get("peak_mem_gb"), "%.1f")))
for r in rows("bench_train.jsonl"):
    peak = max([v for v in (r.get("train_peak_mem_gb"), r.get("eval_peak_mem_gb")) if isinstance(v, (int, float))] or [0])
    print("ptool %-44s %11s %8s %5s %14s %11s %9s %8s" % (
        " ".join([r["preset"], r["device"]] + r.get("sets", [])), f(r.get("tokens_per_s")),
        f(r.get("ms_per_step"), "%.1f"),
        f(r.get("mfu"), "%.3f"), f(r.get("forward_backward_tokens_per_s")), f(r.get("eval_tokens_per_s")),
        f(r.get("eval_mfu"), "%.3f"), f(peak, "%.1f")))
    t = twin.get(r["preset"])
    if t and t.get("tokens_per_s") and t.get("eval_tokens_per_s"):
        print("      ptool/twin: train %.2fx (target 1.2x; ptool optimizer: %s), eval %.2fx (target 1.5x)" % (
            r["tokens_per_s"] / t["tokens_per_s"], r.get("optimizer"), r["eval_tokens_per_s"] / t["eval_tokens_per_s"]))
        print("      fwd+bwd alone: %.2fx the twin's whole step" % (r["forward_backward_tokens_per_s"] / t["tokens_per_s"]))
# ptool eval --json of the trained checkpoint (sliding window, then TTT), in ptool_train.txt among other output
for r in rows("ptool_train.txt"):
    if "val_bpb" in r and "mode" in r:
        print("ptool eval cuda:bf16 %-9s val_bpb %.4f over %s tokens in %.2f s" % (
            r["mode"], r["val_bpb"], r.get("tokens"), r.get("seconds", float("nan"))))
# bench_cuda_ops prints indented JSON objects one after another: the fused RMSNorm backwards against their two ops
p = os.path.join(out, "bench_cuda_ops.jsonl")
text, dec, i = open(p).read() if os.path.exists(p) else "", json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    try:
        o, i = dec.raw_decode(text, i)
    except ValueError:
        break
    ms = {(r["op"], r["pass"], r["shape"]): r["ms"] for r in o.get("results", [])}
    print("\nbench_cuda_ops %s, attention (TFLOP/s, causal pairs counted once):" % o.get("gemm"))
    for r in o.get("results", []):
        if r["op"] == "attention":
            print("  %-9s %-28s %8.3f ms %7.1f" % (r["pass"], r["shape"], r["ms"], r.get("tflops_per_s", 0)))
    print("bench_cuda_ops %s, the token features' ops at recursive_4x7's shapes (GB/s of their own traffic):"
          % o.get("gemm"))
    for r in o.get("results", []):
        if r["op"].startswith(("xsa", "scaled_add", "smear_gate")):
            print("  %-22s %-14s %8.3f ms %7.1f" % (r["op"], r["pass"], r["ms"], r.get("gb_per_s", 0)))
    print("bench_cuda_ops %s, fused RMSNorm backwards against the two ops they replace (ms):" % o.get("gemm"))
    for (op, ps, shape), fused in ms.items():
        two = ms.get((op, "backward 2 ops", shape))
        if ps == "backward fused" and two:
            print("  %-22s %-12s fused %8.3f  2 ops %8.3f  (%.2fx)" % (op, shape, fused, two, two / fused))
EOF
echo "total $(($(date +%s) - start))s" >>"$SUMMARY"
cat "$SUMMARY"
