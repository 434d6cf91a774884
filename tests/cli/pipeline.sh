#!/usr/bin/env bash
# End-to-end check of train -> quantize -> pack -> eval on a small corpus with the project's own tokenizer:
# the packed artifact evaluates exactly like the quantized one, and an artifact over budget is refused with
# no output file.
# Usage: bash tests/cli/pipeline.sh PTOOL_EXE SOURCE_DIR
set -euo pipefail
PTOOL=${1:?usage: pipeline.sh PTOOL_EXE SOURCE_DIR}
SRC=${2:?usage: pipeline.sh PTOOL_EXE SOURCE_DIR}
export LC_ALL=C
T=$(mktemp -d "${TMPDIR:-/tmp}/ptool_cli_pipeline.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
TOK="$SRC/testdata/tiny_sp.model"

# A corpus: scripture when `bible` is installed, else generated sentences; one document per paragraph.
if command -v bible >/dev/null 2>&1; then
  bible -f Gen1:1-Gen20:18 | awk '{split($1,a,":"); if (a[1]!=prev && NR>1) print ""; prev=a[1]; $1=""; sub(/^ /,""); print}' >"$T/corpus.txt"
else
  for i in $(seq 1 400); do echo "the quick brown fox $i jumps over the lazy dog and runs far away"; [ $((i % 10)) = 0 ] && echo; done >"$T/corpus.txt"
fi
"$PTOOL" data shards "$T/corpus.txt" --tokenizer "$TOK" --out-dir "$T/shards" --prefix c --val-docs 3 --quiet

cat >"$T/model.json" <<'JSON'
{"vocab_size": 512, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "physical_blocks": 2, "train_seq_len": 32}
JSON
cat >"$T/rules.json" <<'JSON'
[{"class": "control", "scheme": "f32"}, {"min_numel": 1024, "scheme": "clean", "bits": 8}, {"scheme": "f16"}]
JSON
train() { "$PTOOL" train --config "$T/model.json" --train "$T/shards/c_train_*.bin" --val "$T/shards/c_val_*.bin" \
  --tokenizer "$TOK" --batch-tokens 256 --warmdown-iters 3 --val-tokens 512 "$@"; }
train --steps 6 --out "$T/m.ptc" --json >"$T/train.json"
grep -q '"steps":6' "$T/train.json" || fail "train did not run 6 steps: $(cat "$T/train.json")"

"$PTOOL" quantize "$T/m.ptc" --rules "$T/rules.json" --out "$T/m.ptq" >/dev/null
"$PTOOL" pack "$T/m.ptq" --out "$T/m.ptz" --codec auto >/dev/null
"$PTOOL" inspect "$T/m.ptz" >/dev/null
ev() { "$PTOOL" eval "$1" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 1024 | sed 's/ seconds:.*//'; }
q=$(ev "$T/m.ptq")
p=$(ev "$T/m.ptz")
[ "$q" = "$p" ] || fail "packed eval differs from quantized eval: '$p' vs '$q'"
"$PTOOL" pack "$T/m.ptq" --out "$T/a.ptz" --codec arith --json >"$T/arith.json"
grep -q '"codec":"arith"' "$T/arith.json" || fail "--codec arith stored no section with arith: $(cat "$T/arith.json")"
a=$(ev "$T/a.ptz")
[ "$a" = "$q" ] || fail "arith-packed eval differs from quantized eval: '$a' vs '$q'"
s=$("$PTOOL" eval "$T/m.ptz" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 1024 --stride 8 --json)
echo "$s" | grep -q '"mode":"sliding"' || fail "sliding eval: $s"

# Over budget: non-zero exit, the table, a one-line error, and no output file.
rc=0
"$PTOOL" pack "$T/m.ptq" --out "$T/over.ptz" --budget 1000 >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 1 ] || fail "over-budget pack exited $rc"
grep -q "over the budget" "$T/err" || fail "over-budget message: $(cat "$T/err")"
grep -q "codes.embed" "$T/out" || fail "over-budget pack printed no table"
[ ! -e "$T/over.ptz" ] || fail "over-budget pack left a file"
ls "$T" | grep -q '\.tmp' && fail "a temporary file was left behind"

# --fit: SDClip k per group so that the packed model plus the code bytes lands just under the budget, here 10%
# below the packed size at the rules' own k; pack --codec auto then fits as well.
cat >"$T/sdclip.json" <<'JSON'
[{"class": "control", "scheme": "f32"}, {"min_numel": 1024, "scheme": "sdclip", "bits": 6}, {"scheme": "f16"}]
JSON
num() { python3 -c "import json,sys; print(int(json.load(sys.stdin)['$1']))"; }
"$PTOOL" quantize "$T/m.ptc" --rules "$T/sdclip.json" --out "$T/sd.ptq" >/dev/null
full=$("$PTOOL" pack "$T/sd.ptq" --out "$T/sd.ptz" --codec arith --json | num total_bytes)
budget=$((full * 9 / 10))
"$PTOOL" quantize "$T/m.ptc" --rules "$T/sdclip.json" --fit "$budget" --code-bytes 1000 --out "$T/fit.ptq" 2>"$T/fit.log" >/dev/null ||
  fail "--fit $budget: $(cat "$T/fit.log")"
packed=$("$PTOOL" pack "$T/fit.ptq" --out "$T/fit.ptz" --codec auto --code-bytes 1000 --budget "$budget" --json | num total_bytes)
[ "$packed" -le "$budget" ] || fail "--fit $budget: packed total $packed is over the budget"
[ "$packed" -ge $((budget * 95 / 100)) ] || fail "--fit $budget: packed total $packed is far below the budget"
grep -q "fit: attempt 1" "$T/fit.log" || fail "--fit logged no attempt: $(cat "$T/fit.log")"

# --device cuda either runs (a GPU machine) or says in one line why it cannot.
if ! "$PTOOL" eval "$T/m.ptz" --val "$T/shards/c_val_*.bin" --tokenizer "$TOK" --max-tokens 256 --device cuda \
    >/dev/null 2>"$T/err"; then
  grep -q "CUDA" "$T/err" && [ "$(wc -l <"$T/err")" = 1 ] || fail "--device cuda error: $(cat "$T/err")"
fi
echo "pipeline: ok ($q)"
