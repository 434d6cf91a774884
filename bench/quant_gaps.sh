#!/usr/bin/env bash
# Quantization gaps and packed bytes of one float checkpoint (issue 4's figures):
#   bench/quant_gaps.sh MODEL.ptc VAL_GLOB TOKENIZER TRAIN_GLOB [MAX_EVAL_TOKENS] [OUT_DIR]
# For each rule preset (baseline int8, int6, gptq_lite, gptq) quantizes, packs with each codec and evaluates;
# prints one JSON line per preset.
set -euo pipefail
MODEL=$1 VAL=$2 TOK=$3 TRAIN=$4 MAX=${5:-16384} OUT=${6:-out/quant_gaps}
PTOOL=${PTOOL:-build/ptool}
mkdir -p "$OUT"
float=$("$PTOOL" eval "$MODEL" --val "$VAL" --tokenizer "$TOK" --max-tokens "$MAX" --json)
echo "{\"preset\":\"float\",\"eval\":$float}"
for preset in baseline int6 gptq_lite gptq; do
  q="$OUT/$preset.ptq"
  "$PTOOL" quantize "$MODEL" --preset "$preset" --calib "$TRAIN" --calib-batches 2 --calib-batch-seqs 2 \
    --out "$q" --json > "$OUT/$preset.quantize.json"
  packs=""
  for codec in zlib zstd brotli arith; do
    p=$("$PTOOL" pack "$q" --out "$OUT/$preset.$codec.ptz" --codec "$codec" --json)
    packs="$packs\"$codec\":$(echo "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["file_bytes"])'),"
  done
  ev=$("$PTOOL" eval "$OUT/$preset.arith.ptz" --val "$VAL" --tokenizer "$TOK" --max-tokens "$MAX" --json)
  echo "{\"preset\":\"$preset\",\"packed_bytes\":{${packs%,}},\"eval\":$ev}"
done
