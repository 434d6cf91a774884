#!/usr/bin/env bash
# `ptool config`: every preset prints a full config that --config reads back unchanged; the baseline keeps its
# embedding in bf16; --set overrides single keys (train takes it too); bad input exits non-zero with one line
# naming the problem; and the PyTorch twin's mirror of the presets (bench/torch_twin.py, read without torch)
# expands each one to exactly ptool's config.
#   usage: bash config.sh PTOOL_EXE SOURCE_DIR
set -u
PTOOL=$1
SRC=$2
fail() { echo "config.sh: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Every preset, from the error that names them all.
known=$("$PTOOL" config --preset nope 2>&1 >/dev/null | sed -n "s/.*(known: \(.*\))\$/\1/p")
IFS=', ' read -r -a presets <<<"$known"
[ ${#presets[@]} -ge 8 ] || fail "could not read the preset names from: $known"
for p in "${presets[@]}"; do
  "$PTOOL" config --preset "$p" >"$tmp/$p.json" 2>"$tmp/$p.err" || fail "config --preset $p exited $?"
  "$PTOOL" config --config "$tmp/$p.json" >"$tmp/$p.again.json" 2>/dev/null || fail "config --config ($p) exited $?"
  cmp -s "$tmp/$p.json" "$tmp/$p.again.json" || fail "$p: --config does not read back what config printed"
done
grep -q '"embed_bf16": true' "$tmp/baseline.json" || fail "the baseline preset does not keep tok_emb in bf16"
grep -q '"embed_bf16": false' "$tmp/tiny.json" || fail "the tiny preset has a bf16 embedding"
grep -qx '17059912 parameters' "$tmp/baseline.err" || fail "baseline parameter count: $(cat "$tmp/baseline.err")"

# expect_error PHRASE ARGS...: non-zero exit, nothing on stdout, PHRASE on stderr.
expect_error() {
  local phrase=$1 out rc
  shift
  out=$("$PTOOL" config "$@" 2>"$tmp/err")
  rc=$?
  [ $rc -ne 0 ] || fail "config $* exited 0"
  [ -z "$out" ] || fail "config $* printed to stdout"
  grep -qF -- "$phrase" "$tmp/err" || fail "config $*: stderr lacks '$phrase': $(cat "$tmp/err")"
}
echo '{"d_modle": 64}' >"$tmp/typo.json"
expect_error "typo.json: model config: unknown key 'd_modle'" --config "$tmp/typo.json"
echo '{"d_model": 64,' >"$tmp/broken.json"
expect_error "broken.json: not valid JSON" --config "$tmp/broken.json"
expect_error "cannot open config file" --config "$tmp/missing.json"
expect_error "give --preset or --config, not both" --preset tiny --config "$tmp/tiny.json"
expect_error "unknown preset 'nope'" --preset nope

# --set: JSON values or bare words; physical_blocks or recurrence replace the preset's schedule.
compact() { "$PTOOL" config "$@" 2>/dev/null | tr -d ' \n'; }
out=$(compact --preset baseline --set embed_bf16=false --set mlp_mult=3)
grep -q '"embed_bf16":false' <<<"$out" && grep -q '"mlp_mult":3.0' <<<"$out" || fail "--set values not applied: $out"
out=$(compact --preset tiny --set activation=leaky_relu2 --set 'recurrence={"shared":2,"loops":3}')
grep -q '"activation":"leaky_relu2"' <<<"$out" && grep -q '"schedule":\[0,1,0,1,0,1\]' <<<"$out" \
  || fail "--set activation / recurrence: $out"
grep -q '"schedule":\[0,1,2\]' <<<"$(compact --preset tiny --set physical_blocks=3)" \
  || fail "--set physical_blocks keeps the old schedule"
grep -q '"schedule":\[0,1,1,0\]' <<<"$(compact --preset tiny --set 'schedule=[0,1,1,0]' --set physical_blocks=2)" \
  || fail "--set schedule with physical_blocks"
expect_error "preset tiny with --set: model config: unknown key 'd_modle'" --set d_modle=3
expect_error "--set expects KEY=VALUE, got 'novalue'" --set novalue
expect_error "with --set: model config: d_model" --set d_model=60 --set n_heads=8
# train reads the same options, before it touches any data.
err=$("$PTOOL" train --preset tiny --set d_modle=3 --train "$tmp/none*.bin" --val "$tmp/none*.bin" \
      --tokenizer "$tmp/none.model" 2>&1 >/dev/null)
[ $? -ne 0 ] && grep -qF "unknown key 'd_modle'" <<<"$err" || fail "train --set: $err"

if command -v python3 >/dev/null; then
  python3 - "$SRC/bench" "$tmp" "${presets[@]}" <<'PY' || fail "the twin's presets differ from ptool's"
import json, sys
sys.path.insert(0, sys.argv[1])
import torch_twin  # torch is imported lazily: the config code runs without it
tmp, names = sys.argv[2], sys.argv[3:]
if sorted(names) != sorted(torch_twin.PRESETS):
    sys.exit("preset names: ptool %s, twin %s" % (sorted(names), sorted(torch_twin.PRESETS)))
for n in names:
    ours = json.load(open("%s/%s.json" % (tmp, n)))
    twin = torch_twin.expand_config(torch_twin.PRESETS[n])
    if twin != ours:
        diff = sorted(k for k in set(ours) | set(twin) if ours.get(k) != twin.get(k))
        sys.exit("%s: keys differ: %s" % (n, ", ".join("%s (ptool %r, twin %r)" % (k, ours.get(k), twin.get(k))
                                                         for k in diff)))
PY
fi
echo "config.sh: ok"
