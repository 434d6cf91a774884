#!/usr/bin/env bash
# The main job end to end on the embedded default: a real English corpus that a fresh Debian machine has
# (the King James Bible from the bible-kjv package), a tokenizer trained by `ptool data tokenizer`, shards
# by `ptool data shards`, then train -> quantize -> pack -> eval. Prints val_bpb and the artifact's bytes.
#
#   scripts/main_job.sh [--challenge-data DIR] [--steps N] [--work DIR]
#
# With --challenge-data DIR (a folder with fineweb_1024_bpe.model and text_sp1024/), trains on the
# challenge's shards instead.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=300
WORK=out/main_job
CHALLENGE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --challenge-data) CHALLENGE="$2"; shift 2 ;;
    *) echo "main_job.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PTOOL=${PTOOL:-build/ptool}
[ -x "$PTOOL" ] || { echo "main_job.sh: $PTOOL is missing; run scripts/build.sh first" >&2; exit 1; }
mkdir -p "$WORK"

if [ -n "$CHALLENGE" ]; then
  TOKENIZER="$CHALLENGE/fineweb_1024_bpe.model"
  TRAIN="$CHALLENGE/text_sp1024/text_train_*.bin"
  VAL="$CHALLENGE/text_sp1024/text_val_*.bin"
else
  echo "== corpus: King James Bible (bible-kjv), one document per chapter"
  # `bible -f` prints "Ge1:1 text" lines; a chapter is a document; verse references are dropped.
  bible -f Gen1:1-Rev22:21 2>/dev/null | awk '
    { ref = $1; sub(/^[^ ]+ /, ""); ch = ref; sub(/:.*/, "", ch);
      if (ch != last && NR > 1) printf "\n\n"; else if (NR > 1) printf " ";
      printf "%s", $0; last = ch }
    END { printf "\n" }' > "$WORK/kjv.txt"
  echo "   $(wc -c < "$WORK/kjv.txt") bytes"
  echo "== tokenizer: SentencePiece BPE, vocab 1024"
  "$PTOOL" data tokenizer "$WORK/kjv.txt" --vocab-size 1024 --out "$WORK/kjv_1024"
  echo "== shards: first 60 chapters are validation"
  "$PTOOL" data shards "$WORK/kjv.txt" --tokenizer "$WORK/kjv_1024.model" --out-dir "$WORK/shards" \
    --prefix kjv --val-docs 60
  TOKENIZER="$WORK/kjv_1024.model"
  TRAIN="$WORK/shards/kjv_train_*.bin"
  VAL="$WORK/shards/kjv_val_*.bin"
fi
"$PTOOL" data stats "$VAL" --tokenizer "$TOKENIZER"

echo "== train: preset tiny, $STEPS steps"
"$PTOOL" train --preset tiny --train "$TRAIN" --val "$VAL" --tokenizer "$TOKENIZER" \
  --steps "$STEPS" --batch-tokens 4096 --warmdown-iters $((STEPS / 3)) --val-every $((STEPS / 3)) \
  --val-tokens 65536 --log-every 25 --out "$WORK/model.ptc"

echo "== quantize: int8 per-row (presets/quant_int8_small_models.json: the tiny model's matrices are below the"
echo "   baseline's 65,536-element passthrough threshold, so the rules quantize every matrix of 4,096+ elements)"
"$PTOOL" quantize "$WORK/model.ptc" --rules presets/quant_int8_small_models.json --out "$WORK/model.ptq" | tail -2
echo "== pack: best codec under 16,000,000 bytes"
"$PTOOL" pack "$WORK/model.ptq" --out "$WORK/model.ptz" --codec auto
echo "== eval: the packed artifact"
"$PTOOL" eval "$WORK/model.ptz" --val "$VAL" --tokenizer "$TOKENIZER"
echo "artifact bytes: $(stat -c %s "$WORK/model.ptz")"
