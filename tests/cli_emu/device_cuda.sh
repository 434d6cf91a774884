#!/usr/bin/env bash
# `--device cuda` end to end through the CLI, on the emulated CUDA backend (kernels/emu): train (also on
# `cuda:bf16,nondeterministic`, and with `embed_bf16`'s bf16 residual stream), GPTQ calibration, standard and
# sliding eval each agree with the CPU run of the same command, and without a device
# `--device cuda` fails with a clear message and no output file.
# Usage: bash tests/cli_emu/device_cuda.sh PTOOL_EXE_ON_THE_EMULATOR SOURCE_DIR
set -euo pipefail
PTOOL=${1:?usage: device_cuda.sh PTOOL_EXE SOURCE_DIR}
SRC=${2:?usage: device_cuda.sh PTOOL_EXE SOURCE_DIR}
export LC_ALL=C
T=$(mktemp -d "${TMPDIR:-/tmp}/ptool_cli_cuda_emu.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
TOK="$SRC/testdata/tiny_sp.model"

for i in $(seq 1 300); do
  echo "the quick brown fox $i jumps over the lazy dog and runs far away from the river bank"
  [ $((i % 10)) = 0 ] && echo
done >"$T/corpus.txt"
"$PTOOL" data shards "$T/corpus.txt" --tokenizer "$TOK" --out-dir "$T/shards" --prefix c --val-docs 3 --quiet
cat >"$T/model.json" <<'JSON'
{"vocab_size": 512, "d_model": 64, "n_heads": 2, "n_kv_heads": 1, "physical_blocks": 2, "train_seq_len": 32}
JSON
train() { "$PTOOL" train --config "$T/model.json" --train "$T/shards/c_train_*.bin" --val "$T/shards/c_val_*.bin" \
  --tokenizer "$TOK" --batch-tokens 128 --steps 3 --warmdown-iters 2 --val-tokens 256 --json "$@"; }
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p"; }
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }

# Without the emulator switched on there is no device: a clear error, non-zero exit, no checkpoint.
rc=0
PTOOL_CUDA_EMULATOR=0 train --device cuda --out "$T/none.ptc" >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" != 0 ] || fail "--device cuda without a device exited 0"
grep -qi "cuda" "$T/err" || fail "no CUDA message: $(cat "$T/err")"
[ ! -e "$T/none.ptc" ] || fail "a checkpoint was written without a device"

export PTOOL_CUDA_EMULATOR=1
cpu=$(train --device cpu --out "$T/cpu.ptc")
gpu=$(train --device cuda:fp32 --out "$T/gpu.ptc")
lc=$(echo "$cpu" | field val_loss)
lg=$(echo "$gpu" | field val_loss)
[ -n "$lc" ] && [ -n "$lg" ] || fail "no val_loss in the train summaries: $cpu / $gpu"
close "$lc" "$lg" 1e-3 || fail "train --device cuda:fp32 val_loss $lg, cpu $lc"
# bf16 with atomics (head_dim 32: the flash backward adds dQ from its dK/dV kernel)
ln=$(train --device cuda:bf16,nondeterministic --out "$T/nd.ptc" | field val_loss)
[ -n "$ln" ] || fail "no val_loss from train --device cuda:bf16,nondeterministic"
close "$lc" "$ln" 2e-2 || fail "train --device cuda:bf16,nondeterministic val_loss $ln, cpu $lc"

# embed_bf16: cuda:bf16 keeps the residual stream and its gradient in bf16; train, then a sliding eval of its
# checkpoint, each near the CPU's (whose stream stays fp32).
le=$(train --set embed_bf16=true --device cpu --out "$T/e_cpu.ptc" | field val_loss)
lb=$(train --set embed_bf16=true --device cuda:bf16 --out "$T/e_gpu.ptc" | field val_loss)
[ -n "$le" ] && [ -n "$lb" ] || fail "no val_loss from the embed_bf16 runs: $le / $lb"
close "$le" "$lb" 2e-2 || fail "train --set embed_bf16=true --device cuda:bf16 val_loss $lb, cpu $le"
ee() { "$PTOOL" eval "$T/e_gpu.ptc" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 512 --stride 8 \
  --json "$@" | field val_bpb; }
ec=$(ee --device cpu)
eb=$(ee --device cuda:bf16)
[ -n "$ec" ] && [ -n "$eb" ] || fail "no val_bpb from the embed_bf16 evals: $ec / $eb"
close "$ec" "$eb" 2e-2 || fail "eval --stride 8 of an embed_bf16 model on cuda:bf16 val_bpb $eb, cpu $ec"

ev() { "$PTOOL" eval "$T/cpu.ptc" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 512 --json "$@"; }
for mode in "" "--stride 8"; do
  # shellcheck disable=SC2086
  bc=$(ev --device cpu $mode | field val_bpb)
  for dev in cuda:fp32 cuda:bf16; do
    # shellcheck disable=SC2086
    bg=$(ev --device $dev $mode | field val_bpb)
    tol=1e-5
    [ "$dev" = cuda:bf16 ] && tol=2e-2
    close "$bc" "$bg" $tol || fail "eval $mode --device $dev val_bpb $bg, cpu $bc"
  done
done

cat >"$T/gptq.json" <<'JSON'
[{"class": "control", "scheme": "f32"}, {"min_numel": 1024, "scheme": "sdclip", "gptq": true, "bits": 6}, {"scheme": "f16"}]
JSON
q() { "$PTOOL" quantize "$T/cpu.ptc" --rules "$T/gptq.json" --calib "$T/shards/c_train_*.bin" --calib-batches 2 --calib-batch-seqs 2 "$@" >/dev/null; }
q --device cpu --out "$T/cpu.ptq"
q --device cuda:fp32 --out "$T/gpu.ptq"
qc=$("$PTOOL" eval "$T/cpu.ptq" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 512 --json | field val_bpb)
qg=$("$PTOOL" eval "$T/gpu.ptq" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 512 --json | field val_bpb)
close "$qc" "$qg" 1e-3 || fail "GPTQ calibrated on cuda: val_bpb $qg, on cpu $qc"
echo "ok: train val_loss cpu $lc cuda $lg bf16,nondeterministic $ln; embed_bf16 cpu $le bf16 $lb, its sliding" \
  "eval cpu $ec bf16 $eb; GPTQ val_bpb cpu $qc cuda $qg"
