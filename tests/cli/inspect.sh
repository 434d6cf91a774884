#!/usr/bin/env bash
# `ptool inspect`: the golden artifact in text and --json; corrupt and foreign files give a non-zero exit and
# a one-line error naming the file.   usage: bash inspect.sh PTOOL_EXE SOURCE_DIR
set -u
PTOOL=$1
SRC=$2
GOLDEN=$SRC/testdata/golden_v1.ptc
fail() { echo "inspect.sh: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

out=$("$PTOOL" inspect "$GOLDEN") || fail "inspect of the golden file exited $?"
for want in "PTOOLART 1.0, stage quantized" "tok_emb.weight" "int8_per_row v1" "sections (4)" \
            "16,000,000-byte budget" "all 21 checksums OK" '"tokenizer_sha256"'; do
  grep -qF -- "$want" <<<"$out" || fail "text output lacks '$want'"
done

json=$("$PTOOL" inspect --json "$GOLDEN") || fail "inspect --json exited $?"
[ "$(printf '%s\n' "$json" | wc -l)" -eq 1 ] || fail "--json printed more than one line"
for want in '"version":"1.0"' '"stage":"quantized"' '"verified":21' '"ok":true'; do
  grep -qF -- "$want" <<<"$json" || fail "--json output lacks $want"
done
if command -v python3 >/dev/null; then
  python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); assert len(d["tensors"]) == 16' <<<"$json" \
    || fail "--json output is not the expected JSON object"
fi

# expect_error FILE PHRASE: non-zero exit, nothing on stdout, one line on stderr naming the file and PHRASE.
expect_error() {
  local file=$1 phrase=$2 err rc
  err=$("$PTOOL" inspect "$file" 2>&1 >"$tmp/stdout")
  rc=$?
  [ $rc -ne 0 ] || fail "inspect of $file exited 0"
  [ ! -s "$tmp/stdout" ] || fail "inspect of $file printed to stdout"
  [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "error for $file is not one line: $err"
  grep -qF -- "$file: " <<<"$err" || fail "error does not name $file: $err"
  grep -qF -- "$phrase" <<<"$err" || fail "error for $file lacks '$phrase': $err"
}

size=$(wc -c <"$GOLDEN")
head -c $((size - 100)) "$GOLDEN" >"$tmp/truncated.ptc"
expect_error "$tmp/truncated.ptc" "truncated:"

cp "$GOLDEN" "$tmp/flipped.ptc"
at=$((size - 1))
old=$(od -An -tu1 -j "$at" -N1 "$GOLDEN" | tr -d ' ')
printf "\\$(printf '%03o' $((old ^ 1)))" | dd of="$tmp/flipped.ptc" bs=1 seek="$at" conv=notrunc 2>/dev/null
expect_error "$tmp/flipped.ptc" "section checksum mismatch"

printf 'version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n' >"$tmp/pointer.ptz"
expect_error "$tmp/pointer.ptz" "Git LFS pointer"

expect_error "$tmp/missing.ptc" "cannot open"
echo "inspect.sh: OK"
