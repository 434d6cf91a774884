#!/usr/bin/env bash
# End-to-end check of `ptool data`: train a tokenizer on a small corpus, make shards from text and from JSONL,
# check that `ptool data stats --json` counts are consistent with the corpus, and that bad input fails cleanly.
# Usage: bash tests/cli/data.sh PTOOL_EXE SOURCE_DIR
set -euo pipefail
PTOOL=${1:?usage: data.sh PTOOL_EXE SOURCE_DIR}
SRC=${2:?usage: data.sh PTOOL_EXE SOURCE_DIR}
export LC_ALL=C

T=$(mktemp -d "${TMPDIR:-/tmp}/ptool_cli_data.XXXXXX")
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
field() { sed -E "s/.*\"$1\":([0-9.eE+-]+).*/\1/"; }  # one number from the one-line JSON object
expect_eq() { [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"; }
expect_fail() {  # expect_fail NAME PATTERN CMD...: exit status 1 and a one-line error matching PATTERN
  local name=$1 pattern=$2; shift 2
  local rc=0
  "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" = 1 ] || fail "$name: exit status $rc, expected 1"
  grep -q -- "$pattern" "$T/err" || fail "$name: stderr lacks '$pattern': $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" = 1 ] || fail "$name: error is not one line: $(cat "$T/err")"
}

# Corpus: one document per chapter, verse numbers removed (KJV Genesis-Exodus when `bible` is installed,
# otherwise generated sentences). Plain ASCII with single spaces, so the normalized text is the text itself.
if command -v bible >/dev/null 2>&1; then
  bible -f Gen1:1-Ex40:38 |
    awk '{split($1,a,":"); if (a[1]!=prev && NR>1) print ""; prev=a[1]; $1=""; sub(/^ /,""); print}' >"$T/corpus.txt"
else
  awk 'BEGIN { srand(7); split("in the beginning god created heaven and earth was without form void darkness upon face of deep spirit moved waters said let there be light", w, " ");
               for (d = 0; d < 90; d++) { for (l = 0; l < 20; l++) { s = ""; n = 5 + int(rand() * 20);
                 for (i = 0; i < n; i++) s = s (i ? " " : "") w[1 + int(rand() * 24)]; print s "." } print "" } }' >"$T/corpus.txt"
fi
DOCS=$(awk 'BEGIN{RS=""} END{print NR}' "$T/corpus.txt")
DOC_BYTES=$(awk 'BEGIN{RS=""} {n += length($0)} END{print n}' "$T/corpus.txt")  # docs = lines joined by \n
[ "$DOCS" -gt 20 ] || fail "corpus has only $DOCS documents"

# 1. Tokenizer.
"$PTOOL" data tokenizer "$T/corpus.txt" --vocab-size 512 --out "$T/tok" --max-sentence-length 100000 --threads 1 \
  >"$T/tok.out" || fail "data tokenizer"
# hard_vocab_limit=false: a small corpus may give fewer pieces than asked for.
VOCAB=$(sed -nE 's/.*\(vocab ([0-9]+),.*/\1/p' "$T/tok.out")
[ -n "$VOCAB" ] && [ "$VOCAB" -gt 300 ] && [ "$VOCAB" -le 512 ] || fail "tokenizer output: $(cat "$T/tok.out")"
[ -s "$T/tok.model" ] && [ -s "$T/tok.vocab" ] || fail "tokenizer files missing"
expect_eq "vocab lines" "$(wc -l <"$T/tok.vocab")" "$VOCAB"

# 2. Shards from text.
"$PTOOL" data shards "$T/corpus.txt" --tokenizer "$T/tok.model" --out-dir "$T/shards" --prefix bib \
  --val-docs 10 --shard-tokens 20000 --quiet >"$T/shards.out" || fail "data shards"
[ -f "$T/shards/bib_val_000000.bin" ] && [ -f "$T/shards/bib_train_000000.bin" ] || fail "shard files missing"
for f in "$T"/shards/*.bin; do
  size=$(stat -c %s "$f")
  [ "$size" -le $((1024 + 2 * 20000)) ] || fail "$f holds more than 20000 tokens ($size bytes)"
  [ $(((size - 1024) % 2)) = 0 ] || fail "$f has an odd payload"
done

# 3. Stats: consistency between splits, with the corpus, and with the byte rule.
VAL=$("$PTOOL" data stats "$T/shards/bib_val_*.bin" --tokenizer "$T/tok.model" --json)
TRAIN=$("$PTOOL" data stats "$T/shards/bib_train_*.bin" --tokenizer "$T/tok.model" --json)
ALL=$("$PTOOL" data stats "$T/shards/bib_val_*.bin" "$T/shards/bib_train_*.bin" --tokenizer "$T/tok.model" --json)
for k in documents tokens targets bytes unk_tokens tokens_per_byte; do
  echo "$ALL" | grep -q "\"$k\":" || fail "stats --json lacks $k: $ALL"
done
v() { echo "$1" | field "$2"; }
expect_eq "val documents" "$(v "$VAL" documents)" 10
expect_eq "all documents" "$(v "$ALL" documents)" "$DOCS"
expect_eq "documents add up" "$(v "$ALL" documents)" $(($(v "$VAL" documents) + $(v "$TRAIN" documents)))
expect_eq "tokens add up" "$(v "$ALL" tokens)" $(($(v "$VAL" tokens) + $(v "$TRAIN" tokens)))
expect_eq "targets = tokens - 1" "$(v "$ALL" targets)" $(($(v "$ALL" tokens) - 1))
expect_eq "val targets = tokens - 1" "$(v "$VAL" targets)" $(($(v "$VAL" tokens) - 1))
# The first train token is a BOS (0 bytes), so the bytes of the two splits add up exactly.
expect_eq "bytes add up" "$(v "$ALL" bytes)" $(($(v "$VAL" bytes) + $(v "$TRAIN" bytes)))
# Every byte of every document is counted once (newlines inside a document normalize to one space).
expect_eq "bytes = corpus bytes" "$(v "$ALL" bytes)" "$DOC_BYTES"
expect_eq "unk tokens (byte fallback)" "$(v "$ALL" unk_tokens)" 0
[ "$(v "$ALL" tokens)" -gt "$(($(v "$ALL" documents) * 2))" ] || fail "implausibly few tokens: $ALL"
"$PTOOL" data stats "$T/shards/bib_val_000000.bin" --tokenizer "$T/tok.model" | grep -q "^targets" || fail "table output"

# 4. JSONL input gives the same shards as text input.
awk 'BEGIN{RS=""} {gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\n/, "\\n"); print "{\"text\": \"" $0 "\"}"}' \
  "$T/corpus.txt" >"$T/corpus.jsonl"
"$PTOOL" data shards "$T/corpus.jsonl" --tokenizer "$T/tok.model" --out-dir "$T/jshards" --prefix bib \
  --val-docs 10 --shard-tokens 20000 --quiet >/dev/null || fail "data shards (jsonl)"
for f in "$T"/shards/*.bin; do cmp -s "$f" "$T/jshards/$(basename "$f")" || fail "jsonl shard $(basename "$f") differs"; done
expect_eq "jsonl shard count" "$(ls "$T/jshards" | wc -l)" "$(ls "$T/shards" | wc -l)"

# 5. Re-running with larger shards replaces the stale ones.
"$PTOOL" data shards "$T/corpus.txt" --tokenizer "$T/tok.model" --out-dir "$T/shards" --prefix bib \
  --val-docs 10 --quiet >"$T/rerun.out" || fail "data shards rerun"
expect_eq "shards after rerun" "$(ls "$T/shards" | wc -l)" 2
expect_eq "tokens after rerun" \
  "$("$PTOOL" data stats "$T/shards/bib_*.bin" --tokenizer "$T/tok.model" --json | field tokens)" "$(v "$ALL" tokens)"

# 6. Bad input: one-line errors naming the file, exit status 1.
head -c 2000 "$T/shards/bib_val_000000.bin" >"$T/trunc.bin"
expect_fail "truncated shard" "trunc.bin: truncated shard" "$PTOOL" data stats "$T/trunc.bin" --tokenizer "$T/tok.model"
cp "$T/shards/bib_val_000000.bin" "$T/badid.bin"
printf '\377\377' | dd of="$T/badid.bin" bs=1 seek=$((1024 + 2 * 5)) conv=notrunc 2>/dev/null
expect_fail "token >= vocab" "badid.bin: token id 65535 at position 5" \
  "$PTOOL" data stats "$T/badid.bin" --tokenizer "$T/tok.model"
expect_fail "no match" "no files match" "$PTOOL" data stats "$T/none_*.bin" --tokenizer "$T/tok.model"
expect_fail "bad model" "corpus.txt: not a SentencePiece model" \
  "$PTOOL" data stats "$T/shards/bib_val_000000.bin" --tokenizer "$T/corpus.txt"
printf '{"text": "ok"}\n{"body": 1}\n' >"$T/bad.jsonl"
expect_fail "bad jsonl" "bad.jsonl:2:" \
  "$PTOOL" data shards "$T/bad.jsonl" --tokenizer "$T/tok.model" --out-dir "$T/bad" --quiet
[ -z "$(ls -A "$T/bad" 2>/dev/null)" ] || fail "failed shards run left files: $(ls -A "$T/bad")"

# 7. The challenge's own val shard, when the shared data is present: the required figures.
DATA="$SRC/../shared/data"
if [ -f "$DATA/text_sp1024/text_val_000000.bin" ] && [ -f "$DATA/fineweb_1024_bpe.model" ]; then
  S=$("$PTOOL" data stats "$DATA/text_sp1024/text_val_000000.bin" --tokenizer "$DATA/fineweb_1024_bpe.model" --json)
  expect_eq "val tokens" "$(v "$S" tokens)" 390178
  expect_eq "val targets" "$(v "$S" targets)" 390177
  expect_eq "val bytes" "$(v "$S" bytes)" 997500
else
  echo "skipped: $DATA not found (shared data missing)"
fi
echo "data.sh: all checks passed"
