#!/usr/bin/env python3
"""PyTorch twin of ptool's model and optimizer: the yardstick for ptool's GPU throughput.

Written for this project from REFERENCE.md (sections 1.4, 3, 4.1, 7.2) and ptool's own model code
(src/model/config.cpp, presets.cpp, layout.cpp, model.cpp); it copies no other script. It takes the same
model config JSON as `ptool train --config` (or the same built-in presets) and builds the same parameters
under the same names, then times what the challenge's PyTorch baseline does on one GPU:

  * training steps: bf16 autocast, fp32 master weights cast to bf16 at each matmul, tied embedding kept in
    bf16 like the reference, torch.compile, gradient accumulation, Muon (NS5 in bf16) for the block
    matrices and fused Adam for the embedding and the control scalars;
  * sliding-window evaluation throughput (REFERENCE 7.2, fixed rule: every target scored exactly once).

Usage (see bench/TWIN.md):
  python3 bench/torch_twin.py --preset baseline --steps 20 --json
  python3 bench/torch_twin.py --preset baseline --steps 20 --eval-sliding
  python3 bench/torch_twin.py --config model.json --train 'data/fineweb_train_*.bin'
  python3 bench/torch_twin.py --preset baseline --param-count
  python3 bench/torch_twin.py --preset baseline --dump-init init.json [--check-layout inspect.json]
  python3 bench/torch_twin.py --self-test        # pure-Python checks, needs neither torch nor numpy

Only the pure-Python parts (config, presets, parameter layout, windows, FLOPs, schedules) run without torch.
"""

import argparse
import glob
import json
import math
import os
import shlex
import sys
import time
import traceback

try:  # torch is only needed for the model itself; --self-test and --param-count work without it
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    torch = None
    nn = None
    F = None

_Module = nn.Module if nn is not None else object
_Linear = nn.Linear if nn is not None else object
_Optimizer = torch.optim.Optimizer if torch is not None else object

# ---------------------------------------------------------------------------------------------------------
# Model config: the same keys, defaults, expansion and validation as src/model/config.cpp.
# ---------------------------------------------------------------------------------------------------------

CONFIG_DEFAULTS = {
    "vocab_size": 1024,
    "d_model": 512,
    "n_heads": 8,
    "n_kv_heads": 4,
    "mlp_mult": 2.0,
    "mlp_hidden": 0,
    "activation": "relu2",
    "rope_base": 10000.0,
    "rope_dims": 0,
    "qk_norm": True,
    "q_gain_init": 1.5,
    "logit_softcap": 30.0,
    "tie_embeddings": True,
    "embed_init_std": 0.005,
    "embed_bf16": False,  # the token embedding is a bf16 tensor, as the reference's tok_emb
    "resid_mix": True,
    "ln_scale": False,
    "norm_scale": False,  # learned per-channel scale after each pre-norm
    "skips": "plain",
    "physical_blocks": 9,
    "schedule": [],
    "per_virtual_scalars": False,
    "train_seq_len": 1024,
    "xsa_last": 0,  # exclusive self-attention in the last xsa_last virtual layers
    "ve_dim": 0,    # value embeddings: a [vocab, ve_dim] table joining v in the last ve_last virtual layers
    "ve_last": 0,
    "bigram_buckets": 0,   # BigramHash: a [buckets, bigram_dim] table of hashed (previous, current) token pairs
    "bigram_dim": 0,
    "smear_gate": False,   # SmearGate: each position blends in the one before it, after the embedding's norm
    "overtone_init": False,  # resid_mix on a sigmoid schedule over depth, the embedding's spectrum S_1 k^-1/2
}
KNOWN_KEYS = set(CONFIG_DEFAULTS) | {"recurrence"}

# The built-in presets of src/model/presets.cpp, same numbers (keep in sync).
PRESETS = {
    "tiny": {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "mlp_mult": 2, "physical_blocks": 2,
             "train_seq_len": 128, "embed_init_std": 0.005},
    "tiny_recurrent": {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "mlp_mult": 2, "train_seq_len": 128,
                       "recurrence": {"entry": 1, "shared": 1, "loops": 3, "exit": 1},
                       "per_virtual_scalars": True, "skips": "gated"},
    "baseline": {"vocab_size": 1024, "d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
                 "physical_blocks": 9, "train_seq_len": 1024, "embed_bf16": True},
    "hybrid_recurrent": {"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
                         "recurrence": {"entry": 1, "shared": 4, "loops": 5, "exit": 1},
                         "per_virtual_scalars": True, "train_seq_len": 1024, "overtone_init": True},
    "recursive_4x7": {"d_model": 1024, "n_heads": 32, "n_kv_heads": 8, "mlp_mult": 2,
                      "recurrence": {"shared": 4, "loops": 7}, "train_seq_len": 2048, "xsa_last": 16,
                      "ve_dim": 128, "ve_last": 8, "bigram_buckets": 10240, "bigram_dim": 128,
                      "smear_gate": True},
    "ultimate_recurrent": {"d_model": 768, "n_heads": 8, "n_kv_heads": 2, "mlp_mult": 2, "rope_base": 500000,
                           "recurrence": {"shared": 3, "loops": 3}, "per_virtual_scalars": True,
                           "train_seq_len": 2048},
    "dart": {"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 2,
             "recurrence": {"shared": 1, "loops": 4}, "per_virtual_scalars": True, "train_seq_len": 256},
    "deq_loop": {"d_model": 512, "n_heads": 8, "n_kv_heads": 4, "mlp_mult": 4, "activation": "leaky_relu2",
                 "rope_dims": 16, "q_gain_init": 5.0, "skips": "gated", "physical_blocks": 11,
                 "schedule": [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10], "train_seq_len": 2048},
}

BASELINE_PARAMS = 17059912  # REFERENCE 3.1 (log of the baseline run)


class ConfigError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _cpp_llround(x):
    """std::llround: nearest integer, halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def expand_config(raw):
    """Mirror of config_from_json: unknown keys refused, recurrence expanded, schedule defaulted, validated.

    Returns a new dict with every key of CONFIG_DEFAULTS (like config_to_json)."""
    if not isinstance(raw, dict):
        raise ConfigError("model config: expected a JSON object")
    for k in raw:
        if k not in KNOWN_KEYS:
            raise ConfigError("model config: unknown key '%s'" % k)
    c = dict(CONFIG_DEFAULTS)
    c["schedule"] = []
    for k, v in raw.items():
        if k != "recurrence":
            c[k] = v
    for k in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "mlp_hidden", "rope_dims", "physical_blocks",
              "train_seq_len", "xsa_last", "ve_dim", "ve_last", "bigram_buckets", "bigram_dim"):
        if not _is_int(c[k]):
            raise ConfigError("model config: '%s' must be an integer" % k)
    for k in ("mlp_mult", "rope_base", "q_gain_init", "logit_softcap", "embed_init_std"):
        if isinstance(c[k], bool) or not isinstance(c[k], (int, float)):
            raise ConfigError("model config: '%s' must be a number" % k)
        c[k] = float(c[k])
    for k in ("qk_norm", "tie_embeddings", "embed_bf16", "resid_mix", "ln_scale", "norm_scale",
              "per_virtual_scalars", "smear_gate", "overtone_init"):
        if not isinstance(c[k], bool):
            raise ConfigError("model config: '%s' must be true or false" % k)
    if c["activation"] not in ("relu2", "leaky_relu2"):
        raise ConfigError("model config: activation must be relu2 or leaky_relu2, got '%s'" % c["activation"])
    if c["skips"] not in ("none", "plain", "gated"):
        raise ConfigError("model config: skips must be none, plain or gated, got '%s'" % c["skips"])
    if "schedule" in raw and "recurrence" in raw:
        raise ConfigError("model config: give either 'schedule' or 'recurrence', not both")
    if "schedule" in raw:
        if not isinstance(raw["schedule"], list) or not all(_is_int(b) for b in raw["schedule"]):
            raise ConfigError("model config: 'schedule' must be a list of integers")
        c["schedule"] = list(raw["schedule"])
    elif "recurrence" in raw:
        r = raw["recurrence"]
        if not isinstance(r, dict):
            raise ConfigError("model config: 'recurrence' must be an object")
        for k in r:
            if k not in ("entry", "shared", "loops", "exit"):
                raise ConfigError("model config: unknown key 'recurrence.%s'" % k)
        if "shared" not in r or "loops" not in r:
            raise ConfigError("model config: 'recurrence' needs 'shared' and 'loops'")
        entry, shared, loops, exit_ = r.get("entry", 0), r["shared"], r["loops"], r.get("exit", 0)
        if not all(_is_int(v) for v in (entry, shared, loops, exit_)):
            raise ConfigError("model config: recurrence counts must be integers")
        if entry < 0 or shared < 1 or loops < 1 or exit_ < 0:
            raise ConfigError("model config: recurrence counts must be positive")
        c["physical_blocks"] = entry + shared + exit_
        sched = list(range(entry))
        for _ in range(loops):
            sched += [entry + i for i in range(shared)]
        sched += [entry + shared + i for i in range(exit_)]
        c["schedule"] = sched
    if not c["schedule"]:
        c["schedule"] = list(range(c["physical_blocks"]))
    validate_config(c)
    return c


def head_dim(c):
    return c["d_model"] // c["n_heads"]


def kv_dim(c):
    return head_dim(c) * c["n_kv_heads"]


def mlp_hidden(c):
    return c["mlp_hidden"] if c["mlp_hidden"] > 0 else _cpp_llround(c["mlp_mult"] * c["d_model"])


def rotary_dims(c):
    return c["rope_dims"] if c["rope_dims"] > 0 else head_dim(c)


def virtual_layers(c):
    return len(c["schedule"])


def encoder_layers(c):
    return virtual_layers(c) // 2


def skip_count(c):
    if c["skips"] == "none":
        return 0
    return min(encoder_layers(c), virtual_layers(c) - encoder_layers(c))


def ve_layers(c):
    return min(c["ve_last"], virtual_layers(c)) if c["ve_dim"] > 0 else 0


def scalar_sets(c):
    return virtual_layers(c) if c["per_virtual_scalars"] else c["physical_blocks"]


def scalar_index(c, v):
    return v if c["per_virtual_scalars"] else c["schedule"][v]


def validate_config(c):
    def fail(m):
        raise ConfigError("model config: " + m)

    if c["vocab_size"] < 2 or c["vocab_size"] > 65536:
        fail("vocab_size must be in 2..65536")
    if c["d_model"] < 1:
        fail("d_model must be positive")
    if c["n_heads"] < 1 or c["d_model"] % c["n_heads"] != 0:
        fail("d_model must be a multiple of n_heads")
    if c["n_kv_heads"] < 1 or c["n_heads"] % c["n_kv_heads"] != 0:
        fail("n_heads must be a multiple of n_kv_heads")
    if head_dim(c) % 2 != 0:
        fail("head_dim (d_model / n_heads) must be even for RoPE")
    if c["rope_dims"] < 0 or c["rope_dims"] > head_dim(c) or rotary_dims(c) % 2 != 0:
        fail("rope_dims must be even and at most head_dim")
    if c["rope_base"] <= 1.0:
        fail("rope_base must be > 1")
    if mlp_hidden(c) < 1:
        fail("MLP hidden size must be positive")
    if c["physical_blocks"] < 1:
        fail("physical_blocks must be positive")
    if not c["schedule"]:
        fail("schedule is empty")
    for b in c["schedule"]:
        if b < 0 or b >= c["physical_blocks"]:
            fail("schedule names block %d but there are %d" % (b, c["physical_blocks"]))
    if len(set(c["schedule"])) != c["physical_blocks"]:
        fail("a physical block is never used by the schedule")
    if c["embed_init_std"] <= 0:
        fail("embed_init_std must be positive")
    if c["train_seq_len"] < 1:
        fail("train_seq_len must be positive")
    if c["xsa_last"] < 0:
        fail("xsa_last must be >= 0")
    if c["ve_dim"] < 0 or c["ve_last"] < 0:
        fail("ve_dim and ve_last must be >= 0")
    if (c["ve_dim"] > 0) != (c["ve_last"] > 0):
        fail("ve_dim and ve_last go together: both positive, or both 0 (no value embeddings)")
    if c["bigram_buckets"] < 0 or c["bigram_dim"] < 0:
        fail("bigram_buckets and bigram_dim must be >= 0")
    if (c["bigram_buckets"] > 0) != (c["bigram_dim"] > 0):
        fail("bigram_buckets and bigram_dim go together: both positive, or both 0 (no bigram hash)")
    if c["bigram_buckets"] == 1:
        fail("bigram_buckets must be at least 2 (the first position has a bucket of its own)")
    if c["embed_bf16"] and (c["bigram_buckets"] > 0 or c["smear_gate"]):
        fail("embed_bf16 does not combine with bigram_buckets or smear_gate (the embedding stage is then fp32)")


def load_config(args):
    """(name, expanded config) from --config FILE or --preset NAME."""
    if args.config:
        with open(args.config) as f:
            raw = json.load(f)
        # A `ptool inspect --json` dump of an artifact carries the config under metadata.model.
        if isinstance(raw, dict) and isinstance(raw.get("metadata"), dict) and "model" in raw["metadata"]:
            raw = raw["metadata"]["model"]
        return os.path.basename(args.config), expand_config(raw)
    if args.preset not in PRESETS:
        raise ConfigError("unknown preset '%s' (known: %s)" % (args.preset, ", ".join(sorted(PRESETS))))
    return args.preset, expand_config(PRESETS[args.preset])


# ---------------------------------------------------------------------------------------------------------
# Parameter layout: names, shapes, initialisers and optimizer groups in src/model/layout.cpp's order.
# ---------------------------------------------------------------------------------------------------------

def ptool_layout(c):
    """List of (name, shape, init, group) exactly as make_layout() builds it."""
    D, KV, Hd = c["d_model"], kv_dim(c), mlp_hidden(c)
    out = [("tok_emb.weight", [c["vocab_size"], D], "normal_embed", "embed")]
    for b in range(c["physical_blocks"]):
        p = "blocks.%d." % b
        out += [
            (p + "attn.c_q.weight", [D, D], "uniform_fan_in", "matrix"),
            (p + "attn.c_k.weight", [KV, D], "uniform_fan_in", "matrix"),
            (p + "attn.c_v.weight", [KV, D], "uniform_fan_in", "matrix"),
            (p + "attn.proj.weight", [D, D], "zeros", "matrix"),
            (p + "mlp.fc.weight", [Hd, D], "uniform_fan_in", "matrix"),
            (p + "mlp.proj.weight", [D, Hd], "zeros", "matrix"),
        ]
    for s in range(scalar_sets(c)):
        p = ("layers.%d." if c["per_virtual_scalars"] else "blocks.%d.") % s
        out.append((p + "attn_scale", [D], "ones", "scalar"))
        out.append((p + "mlp_scale", [D], "ones", "scalar"))
        if c["resid_mix"]:
            out.append((p + "resid_mix", [2, D], "resid_mix", "scalar"))
        if c["norm_scale"]:
            out.append((p + "attn_norm_scale", [D], "ones", "scalar"))
            out.append((p + "mlp_norm_scale", [D], "ones", "scalar"))
        out.append((p + "attn.q_gain", [c["n_heads"]], "q_gain", "scalar"))
    if skip_count(c) > 0:
        out.append(("skip_weights", [skip_count(c), D], "ones", "scalar"))
        if c["skips"] == "gated":
            out.append(("skip_gates", [skip_count(c), D], "zeros", "scalar"))
    if not c["tie_embeddings"]:
        out.append(("lm_head.weight", [c["vocab_size"], D], "zeros", "head"))
    if ve_layers(c) > 0:
        out += [("ve.embed.weight", [c["vocab_size"], c["ve_dim"]], "ve_embed", "embed"),
                ("ve.proj.weight", [KV, c["ve_dim"]], "zeros", "matrix"),
                ("ve_scale", [1], "ve_scale", "scalar"),
                ("ve_layer_scales", [ve_layers(c)], "ones", "scalar")]
    if c["bigram_buckets"] > 0:
        out += [("bigram.embed.weight", [c["bigram_buckets"], c["bigram_dim"]], "zeros", "embed"),
                ("bigram.proj.weight", [D, c["bigram_dim"]], "uniform_fan_in", "matrix"),
                ("bigram_scale", [1], "bigram_scale", "scalar")]
    if c["smear_gate"]:
        out.append(("smear_gate", [D], "zeros", "scalar"))
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def layout_param_count(c):
    return sum(numel(s) for _, s, _, _ in ptool_layout(c))


def compare_with_inspect(layout_pairs, inspect_json):
    """Compare [(name, shape)] with the weights section of `ptool inspect --json`. Returns a list of
    differences (empty when names, order and shapes agree)."""
    theirs = [(t["name"], list(t["shape"])) for t in inspect_json["tensors"] if t.get("section") == "weights"]
    ours = [(n, list(s)) for n, s in layout_pairs]
    diffs = []
    if [n for n, _ in ours] != [n for n, _ in theirs]:
        so, st = set(n for n, _ in ours), set(n for n, _ in theirs)
        for n in sorted(so - st):
            diffs.append("only in the twin: " + n)
        for n in sorted(st - so):
            diffs.append("only in ptool: " + n)
        if so == st:
            diffs.append("same names, different order")
    td = dict(theirs)
    for n, s in ours:
        if n in td and td[n] != s:
            diffs.append("%s: twin %s, ptool %s" % (n, s, td[n]))
    return diffs


# ---------------------------------------------------------------------------------------------------------
# FLOPs, schedules, sliding windows (pure Python).
# ---------------------------------------------------------------------------------------------------------

def executed_matmul_params(c):
    """Weights multiplied per token in one forward: the output head (V x d; the embedding lookup itself costs
    nothing) plus every block matrix once per *virtual* layer (depth recurrence re-runs shared blocks)."""
    D, KV, Hd = c["d_model"], kv_dim(c), mlp_hidden(c)
    per_block = D * D + 2 * KV * D + D * D + 2 * Hd * D
    return c["vocab_size"] * D + virtual_layers(c) * per_block


def train_flops_per_token(c, seq_len):
    """6 * N_exec + 6 * L_virt * d * T: 6 FLOPs per weight (fwd 2 + bwd 4) and attention 12 * L * d * T
    (QK^T and AV, fwd+bwd) halved for the causal mask."""
    return 6 * executed_matmul_params(c) + 6 * virtual_layers(c) * c["d_model"] * seq_len


def eval_flops_per_token(c, seq_len):
    """Forward only: 2 * N_exec + 2 * L_virt * d * T (attention 4 * L * d * T halved for the causal mask)."""
    return 2 * executed_matmul_params(c) + 2 * virtual_layers(c) * c["d_model"] * seq_len


def flops_formula_text(c, seq_len):
    n = executed_matmul_params(c)
    return ("train FLOPs/token = 6*N_exec + 6*L*d*T = 6*%d + 6*%d*%d*%d = %.4g "
            "(N_exec = V*d + L_virtual * block matrix params; attention 12*L*d*T halved for causal)"
            % (n, virtual_layers(c), c["d_model"], seq_len, train_flops_per_token(c, seq_len)))


def lr_mul_step(step, iterations, warmdown_iters):
    """ptool lr_mul_step_warmdown (REFERENCE 3.3 without a wall-clock cap): linear warmdown to 0."""
    if warmdown_iters <= 0:
        return 1.0
    start = max(iterations - warmdown_iters, 0)
    if start <= step < iterations:
        return max((iterations - step) / max(warmdown_iters, 1), 0.0)
    return 1.0


def muon_momentum_at(step, start, end, warmup_steps):
    frac = 1.0 if warmup_steps <= 0 else min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


def sliding_windows(n_targets, L, S):
    """src/eval/windows.cpp sliding_windows: (start, len, score_from); window feeds tokens[start, start+len)
    and scores targets tokens[start+p+1] for p in [score_from, len). Starts 0, S, 2S, ... kept while
    start + (L - S) < n_targets; the first scores everything, later ones [L - S, len)."""
    if L < 1 or S < 1 or S > L:
        raise ValueError("sliding window needs 0 < stride <= seq_len")
    out = []
    s = 0
    while n_targets > 0 and (s == 0 or s + (L - S) < n_targets):
        ln = min(L, n_targets - s)
        out.append((s, ln, 0 if s == 0 else L - S))
        s += S
    return out


def ntk_rope_base(base, rot, seq_len, train_seq_len):
    """cpu::rope_ntk_base: base * (seq_len / train_seq_len)^(rot / (rot - 2)) when seq_len > train_seq_len."""
    if seq_len <= train_seq_len:
        return base
    if rot <= 2:
        raise ValueError("NTK rescaling needs more than 2 rotary dims")
    return base * (seq_len / train_seq_len) ** (rot / (rot - 2))


# ---------------------------------------------------------------------------------------------------------
# The model (torch).
# ---------------------------------------------------------------------------------------------------------

def _torch_version():
    parts = []
    for p in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class CastedLinear(_Linear):
    """nn.Linear without bias whose fp32 master weight is cast to the activation dtype at the matmul.
    Default init = PyTorch's kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in)), as ptool's uniform_fan_in."""

    def __init__(self, in_features, out_features, zero_init=False):
        super().__init__(in_features, out_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(_Module):
    """Half-split RoPE on the first `rot` dims of each head; cos/sin precomputed in float64 for seq_len
    positions (with ptool's NTK base when seq_len > train_seq_len), stored fp32, cast at use."""

    def __init__(self, rot, base, seq_len, train_seq_len):
        super().__init__()
        self.rot = rot
        self.seq_len = seq_len
        b = ntk_rope_base(base, rot, seq_len, train_seq_len)
        half = rot // 2
        inv_freq = torch.tensor([b ** (-2.0 * i / rot) for i in range(half)], dtype=torch.float64)
        t = torch.arange(seq_len, dtype=torch.float64)
        ang = torch.outer(t, inv_freq)  # [T, rot/2]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, x):
        """x: [B, H, T, hd]; rotates x[..., :rot] (x1 = first half, x2 = second half)."""
        T = x.size(2)
        cos = self.cos[:T].to(x.dtype)
        sin = self.sin[:T].to(x.dtype)
        half = self.rot // 2
        x1 = x[..., :half]
        x2 = x[..., half:self.rot]
        r1 = x1 * cos + x2 * sin
        r2 = x2 * cos - x1 * sin
        if self.rot == x.size(-1):
            return torch.cat((r1, r2), dim=-1)
        return torch.cat((r1, r2, x[..., self.rot:]), dim=-1)


class QGain(_Module):
    """Holds the per-head q_gain where ptool names it `<prefix>.attn.q_gain` without a whole attention."""

    def __init__(self, n_heads, init):
        super().__init__()
        self.q_gain = nn.Parameter(torch.full((n_heads,), float(init), dtype=torch.float32))


class Attention(_Module):
    def __init__(self, c, with_q_gain, use_gqa_kwarg):
        super().__init__()
        D, KV = c["d_model"], kv_dim(c)
        self.n_heads, self.n_kv, self.hd = c["n_heads"], c["n_kv_heads"], head_dim(c)
        self.qk_norm = c["qk_norm"]
        self.use_gqa_kwarg = use_gqa_kwarg
        self.c_q = CastedLinear(D, D)
        self.c_k = CastedLinear(D, KV)
        self.c_v = CastedLinear(D, KV)
        self.proj = CastedLinear(D, D, zero_init=True)
        if with_q_gain:
            self.q_gain = nn.Parameter(torch.full((c["n_heads"],), float(c["q_gain_init"]), dtype=torch.float32))

    def forward(self, h, q_gain, rotary, xsa, ve):
        B, T, D = h.shape
        q = self.c_q(h).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.c_k(h).view(B, T, self.n_kv, self.hd).transpose(1, 2)     # [B, Hkv, T, hd]
        v = self.c_v(h)
        if ve is not None:  # the value embedding, already scaled for this layer
            v = v + ve
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.qk_norm:
            q = F.rms_norm(q, (self.hd,))
            k = F.rms_norm(k, (self.hd,))
        q = rotary(q)
        k = rotary(k)
        q = q * q_gain.to(q.dtype)[None, :, None, None]
        if self.n_kv == self.n_heads:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.use_gqa_kwarg:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # torch < 2.5: no enable_gqa; repeat each kv head for its group of query heads
            rep = self.n_heads // self.n_kv
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
                                               is_causal=True)
        if xsa:  # exclusive self-attention: drop each head's component along its token's own (unit) value
            vn = F.normalize(v, dim=-1).repeat_interleave(self.n_heads // self.n_kv, dim=1)
            y = y - (y * vn).sum(dim=-1, keepdim=True) * vn
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.proj(y)


class ValueEmbedding(_Module):
    """ve.embed (a [vocab, ve_dim] table, N(0, 0.01)) and ve.proj (to the KV width, zero-initialised)."""

    def __init__(self, V, dim, kv):
        super().__init__()
        self.embed = nn.Embedding(V, dim)
        self.proj = CastedLinear(dim, kv, zero_init=True)
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, mean=0.0, std=0.01)


class BigramHash(_Module):
    """bigram.embed (a [buckets, dim] table, zeros) and bigram.proj (to d_model, the linears' default init)."""

    def __init__(self, buckets, dim, D):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        self.proj = CastedLinear(dim, D)
        with torch.no_grad():
            nn.init.zeros_(self.embed.weight)

    def forward(self, idx):
        """Bucket of each (previous, current) pair per sequence; the first position has bucket buckets - 1."""
        cur = idx.long()
        prev = torch.cat((torch.zeros_like(cur[:, :1]), cur[:, :-1]), dim=1)
        h = torch.bitwise_xor(36313 * cur, 27191 * prev) % (self.buckets - 1)
        h[:, 0] = self.buckets - 1
        return self.proj(self.embed(h))


class MLP(_Module):
    def __init__(self, c):
        super().__init__()
        D, Hd = c["d_model"], mlp_hidden(c)
        self.leaky = c["activation"] == "leaky_relu2"
        self.fc = CastedLinear(D, Hd)
        self.proj = CastedLinear(Hd, D, zero_init=True)

    def forward(self, h):
        u = self.fc(h)
        a = F.leaky_relu(u, 0.5) if self.leaky else F.relu(u)
        return self.proj(a.square())


def _scalar_params(module, c):
    """attn_scale, mlp_scale, resid_mix, [attn|mlp]_norm_scale on `module` (fp32, ptool's inits)."""
    D = c["d_model"]
    module.attn_scale = nn.Parameter(torch.ones(D, dtype=torch.float32))
    module.mlp_scale = nn.Parameter(torch.ones(D, dtype=torch.float32))
    if c["resid_mix"]:
        module.resid_mix = nn.Parameter(torch.stack((torch.ones(D), torch.zeros(D))).float())
    if c["norm_scale"]:
        module.attn_norm_scale = nn.Parameter(torch.ones(D, dtype=torch.float32))
        module.mlp_norm_scale = nn.Parameter(torch.ones(D, dtype=torch.float32))


class ScalarSet(_Module):
    """Per-virtual-layer control scalars: layers.i.{attn_scale, mlp_scale, resid_mix, attn.q_gain}."""

    def __init__(self, c):
        super().__init__()
        _scalar_params(self, c)
        self.attn = QGain(c["n_heads"], c["q_gain_init"])


class Block(_Module):
    """One physical block. Its matrices are blocks.b.attn.{c_q,c_k,c_v,proj}.weight and
    blocks.b.mlp.{fc,proj}.weight; with per-block scalars it also holds attn_scale, mlp_scale, resid_mix and
    attn.q_gain."""

    def __init__(self, c, with_scalars, use_gqa_kwarg):
        super().__init__()
        self.attn = Attention(c, with_scalars, use_gqa_kwarg)
        self.mlp = MLP(c)
        if with_scalars:
            _scalar_params(self, c)

    def forward(self, x, x0, sc, q_gain, ln, rotary, xsa, ve):
        """sc: the module holding attn_scale/mlp_scale/resid_mix for this virtual layer; ln: 1/sqrt(v+1) or
        1.0. Same order as ptool's layer_forward (the residual adds to the resid_mix output)."""
        D = x.size(-1)
        mix = getattr(sc, "resid_mix", None)
        if mix is not None:
            m = mix.to(x.dtype)
            x = m[0][None, None, :] * x + m[1][None, None, :] * x0
        h = F.rms_norm(x, (D,))
        if ln != 1.0:
            h = h * ln
        ns = getattr(sc, "attn_norm_scale", None)
        if ns is not None:
            h = h * ns.to(h.dtype)[None, None, :]
        x = x + sc.attn_scale.to(x.dtype)[None, None, :] * self.attn(h, q_gain, rotary, xsa, ve)
        h = F.rms_norm(x, (D,))
        if ln != 1.0:
            h = h * ln
        ns = getattr(sc, "mlp_norm_scale", None)
        if ns is not None:
            h = h * ns.to(h.dtype)[None, None, :]
        x = x + sc.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(h)
        return x


class GPT(_Module):
    def __init__(self, c, seq_len, use_gqa_kwarg=True):
        super().__init__()
        self.cfg = c
        D, V = c["d_model"], c["vocab_size"]
        self.schedule = list(c["schedule"])
        self.n_virtual = len(self.schedule)
        self.n_enc = encoder_layers(c)
        self.n_skip = skip_count(c)
        self.gated = c["skips"] == "gated"
        self.per_virtual = c["per_virtual_scalars"]
        self.softcap = float(c["logit_softcap"])
        self.tied = c["tie_embeddings"]
        self.xsa_last = c["xsa_last"]
        self.n_ve = ve_layers(c)
        self.ln = [1.0 / math.sqrt(v + 1) if c["ln_scale"] else 1.0 for v in range(self.n_virtual)]
        self.tok_emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(
            [Block(c, not self.per_virtual, use_gqa_kwarg) for _ in range(c["physical_blocks"])])
        if self.per_virtual:
            self.layers = nn.ModuleList([ScalarSet(c) for _ in range(self.n_virtual)])
        if self.n_skip > 0:
            self.skip_weights = nn.Parameter(torch.ones(self.n_skip, D, dtype=torch.float32))
            if self.gated:
                self.skip_gates = nn.Parameter(torch.zeros(self.n_skip, D, dtype=torch.float32))
        if not self.tied:
            self.lm_head = CastedLinear(D, V, zero_init=True)
        if c["bigram_buckets"] > 0:
            self.bigram = BigramHash(c["bigram_buckets"], c["bigram_dim"], D)
            self.bigram_scale = nn.Parameter(torch.full((1,), 0.05, dtype=torch.float32))
        if c["smear_gate"]:
            self.smear_gate = nn.Parameter(torch.zeros(D, dtype=torch.float32))
        if self.n_ve > 0:
            self.ve = ValueEmbedding(V, c["ve_dim"], kv_dim(c))
            self.ve_scale = nn.Parameter(torch.full((1,), 0.1, dtype=torch.float32))
            self.ve_layer_scales = nn.Parameter(torch.ones(self.n_ve, dtype=torch.float32))
        self.rotary = Rotary(rotary_dims(c), c["rope_base"], seq_len, c["train_seq_len"])
        with torch.no_grad():
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=c["embed_init_std"])
            if c["overtone_init"]:
                self._overtone(c)

    def _overtone(self, c):
        """ptool's overtone_init (src/model/layout.cpp): m0 = sigmoid(3 (i / (L - 1) - 0.5)) per scalar set, and
        the embedding's singular values reshaped to S_1 k^(-1/2), its singular vectors kept (in float64)."""
        L = scalar_sets(c)
        if c["resid_mix"]:
            for i in range(L):
                f = i / (L - 1) if L > 1 else 0.0
                m0 = 1.0 / (1.0 + math.exp(-3.0 * (f - 0.5)))
                mix = (self.layers[i] if self.per_virtual else self.blocks[i]).resid_mix
                mix[0].fill_(m0)
                mix[1].fill_(1.0 - m0)
        U, S, Vh = torch.linalg.svd(self.tok_emb.weight.double(), full_matrices=False)
        k = torch.arange(1, S.numel() + 1, dtype=torch.float64)
        self.tok_emb.weight.copy_((U * (S[0] / k.sqrt())) @ Vh)

    def hidden(self, idx):
        x = self.tok_emb(idx)
        if self.cfg["bigram_buckets"] > 0:
            b = self.bigram(idx)
            x = x + self.bigram_scale.to(b.dtype) * b
        x = F.rms_norm(x, (x.size(-1),))
        if self.cfg["smear_gate"]:  # (1 - s) x_t + s x_{t-1}, x_{-1} = 0
            s = torch.sigmoid(self.smear_gate.to(x.dtype))
            prev = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)
            x = (1 - s) * x + s * prev
        x0 = x
        ve_base = None
        if self.n_ve > 0:  # ve_scale * proj(table[idx]), once; each VE layer adds its own scalar times it to v
            p = self.ve.proj(self.ve.embed(idx))
            ve_base = self.ve_scale.to(p.dtype) * p
        enc_out = []
        for v in range(self.n_virtual):
            blk = self.blocks[self.schedule[v]]
            if self.per_virtual:
                sc = self.layers[v]
                q_gain = sc.attn.q_gain
            else:
                sc = blk
                q_gain = blk.attn.q_gain
            if v >= self.n_enc and v - self.n_enc < self.n_skip:
                k = v - self.n_enc
                skip = enc_out[self.n_enc - 1 - k]  # LIFO: the last encoder output feeds the first decoder
                ws = self.skip_weights[k].to(x.dtype)[None, None, :] * skip
                if self.gated:
                    g = torch.sigmoid(self.skip_gates[k].to(x.dtype))[None, None, :]
                    x = g * x + (1.0 - g) * ws
                else:
                    x = x + ws
            i = v - (self.n_virtual - self.n_ve)
            ve = self.ve_layer_scales[i].to(ve_base.dtype) * ve_base if i >= 0 and self.n_ve > 0 else None
            x = blk(x, x0, sc, q_gain, self.ln[v], self.rotary, v >= self.n_virtual - self.xsa_last, ve)
            if v < self.n_enc:
                enc_out.append(x)
        return F.rms_norm(x, (x.size(-1),))

    def logits(self, h):
        w = self.tok_emb.weight if self.tied else self.lm_head.weight
        z = F.linear(h, w.to(h.dtype))
        if self.softcap > 0:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def forward(self, idx, targets):
        """Mean cross-entropy (fp32) over all positions."""
        z = self.logits(self.hidden(idx))
        return F.cross_entropy(z.float().reshape(-1, z.size(-1)), targets.reshape(-1), reduction="mean")

    def per_token_loss(self, idx, targets):
        """[B, T] fp32 cross-entropy per position (for the sliding-window eval)."""
        z = self.logits(self.hidden(idx))
        nll = F.cross_entropy(z.float().reshape(-1, z.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view(targets.shape)


def check_model_layout(model, c):
    """The model's parameters must be exactly ptool's layout (names and shapes; order is compared by name)."""
    ours = {n: list(p.shape) for n, p in model.named_parameters()}
    want = [(n, s) for n, s, _, _ in ptool_layout(c)]
    problems = []
    for n, s in want:
        if n not in ours:
            problems.append("missing " + n)
        elif ours[n] != s:
            problems.append("%s: %s, ptool %s" % (n, ours[n], s))
    for n in ours:
        if n not in dict(want):
            problems.append("extra " + n)
    if problems:
        raise RuntimeError("twin parameters differ from ptool's layout: " + "; ".join(problems[:10]))


def build_model(c, seq_len, device, embed_fp32, seed):
    torch.manual_seed(seed)
    use_gqa_kwarg = _torch_version() >= (2, 5)
    model = GPT(c, seq_len, use_gqa_kwarg).to(device)
    check_model_layout(model, c)
    # Reference precision: everything fp32 except, under embed_bf16 (the baseline preset), the embedding, which the
    # reference leaves in bf16 (model.bfloat16(), then CastedLinear and control tensors back to fp32; REFERENCE 3.2).
    if c["embed_bf16"] and not embed_fp32:
        model.tok_emb.to(dtype=torch.bfloat16)
    return model


# ---------------------------------------------------------------------------------------------------------
# Optimizer: Muon for block matrices, fused Adam for the rest (REFERENCE 3.3, 4.1).
# ---------------------------------------------------------------------------------------------------------

NS5_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(G, steps, eps=1e-7, dtype=None):
    """Quintic Newton-Schulz orthogonalisation in bf16 (REFERENCE 4.1); dtype=torch.float32 runs it in fp32."""
    a, b, c = NS5_COEFFS
    X = G.to(dtype if dtype is not None else torch.bfloat16)
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X


class Muon(_Optimizer):
    """Single-GPU form of the baseline Muon: momentum + Nesterov, NS5, shape scale sqrt(max(1, rows/cols)),
    updates gathered in one flat bf16 buffer (as the reference does before its all-reduce), W -= lr * U.
    update_dtype=torch.float32 keeps the updates in fp32 (bench/twin_parity.py, against ptool's fp32 Muon)."""

    def __init__(self, params, lr, momentum, ns_steps, nesterov=True, ns_fn=None, update_dtype=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, nesterov=nesterov))
        self.ns_fn = ns_fn if ns_fn is not None else newton_schulz5
        self.update_dtype = update_dtype if update_dtype is not None else torch.bfloat16

    def step(self):
        with torch.no_grad():
            self._muon_step()

    def _muon_step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mom = group["lr"], group["momentum"]
            total = sum(p.numel() for p in params)
            flat = torch.empty(total, dtype=self.update_dtype, device=params[0].device)
            cur = 0
            for p in params:
                g = p.grad
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(g)
                buf = st["momentum_buffer"]
                buf.mul_(mom).add_(g)
                u = g.add(buf, alpha=mom) if group["nesterov"] else buf
                u = self.ns_fn(u, group["ns_steps"])
                u = u * max(1.0, u.size(0) / u.size(1)) ** 0.5
                flat[cur:cur + p.numel()] = u.reshape(-1)
                cur += p.numel()
            cur = 0
            for p in params:
                p.add_(flat[cur:cur + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                cur += p.numel()


def make_optimizers(model, c, args, ns_fn, update_dtype=None, fused=True):
    groups = {n: g for n, _, _, g in ptool_layout(c)}
    named = dict(model.named_parameters())
    by_group = {"embed": [], "head": [], "matrix": [], "scalar": []}
    for n, _, _, g in ptool_layout(c):
        by_group[g].append(named[n])
    assert len(groups) == len(named)
    adam = dict(betas=(args.beta1, args.beta2), eps=args.adam_eps, weight_decay=0.0, fused=fused)
    embed_lr = args.tied_embed_lr if c["tie_embeddings"] else args.embed_lr
    opts = []
    opts.append(torch.optim.Adam([{"params": by_group["embed"], "lr": embed_lr, "base_lr": embed_lr}], **adam))
    if by_group["head"]:
        opts.append(torch.optim.Adam([{"params": by_group["head"], "lr": args.head_lr, "base_lr": args.head_lr}],
                                     **adam))
    opts.append(torch.optim.Adam([{"params": by_group["scalar"], "lr": args.scalar_lr, "base_lr": args.scalar_lr}],
                                 **adam))
    muon = Muon(by_group["matrix"], lr=args.matrix_lr, momentum=args.muon_momentum, ns_steps=args.ns_steps,
                ns_fn=ns_fn, update_dtype=update_dtype)
    for g in muon.param_groups:
        g["base_lr"] = args.matrix_lr
    opts.append(muon)
    return opts, muon


# ---------------------------------------------------------------------------------------------------------
# Data: challenge shards (REFERENCE 1.1) or synthetic tokens; the baseline's sequential TokenStream (1.4).
# ---------------------------------------------------------------------------------------------------------

SHARD_MAGIC, SHARD_VERSION, HEADER_WORDS = 20240520, 1, 256


def load_shard(path):
    import numpy as np
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if header.size != HEADER_WORDS or int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise ValueError("%s: not a token shard (bad header, magic or version)" % path)
    n = int(header[2])
    expect = HEADER_WORDS * 4 + 2 * n
    if os.path.getsize(path) != expect:
        raise ValueError("%s: size %d, header says %d" % (path, os.path.getsize(path), expect))
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_WORDS * 4, shape=(n,))


class TokenStream:
    """Sequential, wrapping stream over shards (or over one in-memory array), like the baseline's."""

    def __init__(self, files=None, array=None):
        self.files = sorted(files) if files else []
        self.array = array
        self.file_idx = 0
        self.tokens = array if array is not None else load_shard(self.files[0])
        self.pos = 0

    def _advance(self):
        if self.array is None:
            self.file_idx = (self.file_idx + 1) % len(self.files)
            self.tokens = load_shard(self.files[self.file_idx])
        self.pos = 0

    def take(self, n):
        import numpy as np
        parts = []
        left = n
        while left > 0:
            avail = len(self.tokens) - self.pos
            if avail <= 0:
                self._advance()
                continue
            k = min(left, avail)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            left -= k
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Batches:
    """One micro-batch per call: (micro_tokens + 1) stream tokens -> x, y of [micro_tokens / T, T] on device."""

    def __init__(self, stream, micro_tokens, seq_len, device):
        self.stream, self.micro_tokens, self.seq_len, self.device = stream, micro_tokens, seq_len, device

    def next(self):
        import numpy as np
        chunk = self.stream.take(self.micro_tokens + 1)
        t = torch.from_numpy(np.asarray(chunk).astype(np.int64))
        x = t[:-1].view(-1, self.seq_len)
        y = t[1:].view(-1, self.seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def synthetic_tokens(n, vocab, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=n, dtype=np.int64).astype(np.uint16)


def shard_files(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError("no files match " + pattern)
    return files


def check_vocab(tokens, vocab, what):
    import numpy as np
    mx = int(np.asarray(tokens).max()) if len(tokens) else 0
    if mx >= vocab:
        raise ValueError("%s holds token id %d >= vocab_size %d" % (what, mx, vocab))


# ---------------------------------------------------------------------------------------------------------
# Compilation with a fall-back when fullgraph tracing fails.
# ---------------------------------------------------------------------------------------------------------

class Compiled:
    """Calls fn through torch.compile (dynamic=False). If fullgraph compilation raises on the first call, warns,
    resets dynamo and retries once without fullgraph (recorded in .mode)."""

    def __init__(self, fn, enabled, fullgraph, label):
        self.fn, self.enabled, self.fullgraph, self.label = fn, enabled, fullgraph, label
        self.first = True
        self.mode = "eager" if not enabled else ("compiled fullgraph" if fullgraph else "compiled")
        self.compiled = torch.compile(fn, dynamic=False, fullgraph=fullgraph) if enabled else fn

    def __call__(self, *a):
        if not self.first:
            return self.compiled(*a)
        self.first = False
        try:
            return self.compiled(*a)
        except Exception:
            if not (self.enabled and self.fullgraph):
                raise
            print("warning: fullgraph compile of %s failed; retrying without fullgraph:\n%s"
                  % (self.label, traceback.format_exc()), file=sys.stderr)
            torch._dynamo.reset()
            self.fullgraph = False
            self.mode = "compiled (fullgraph failed)"
            self.compiled = torch.compile(self.fn, dynamic=False, fullgraph=False)
            return self.compiled(*a)


# ---------------------------------------------------------------------------------------------------------
# Benchmarks.
# ---------------------------------------------------------------------------------------------------------

def run_training(model, c, args, device, seq_len, micro_tokens, stream, res):
    ns_fn = torch.compile(newton_schulz5) if args.compile else newton_schulz5
    opts, muon = make_optimizers(model, c, args, ns_fn)
    fwd = Compiled(model, args.compile, args.fullgraph, "model")
    batches = Batches(stream, micro_tokens, seq_len, device)
    accum = args.grad_accum
    def autocast():  # a fresh context each time
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    def step_fn(step):
        mul = lr_mul_step(step, args.iterations, args.warmdown_iters)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mul
        mom = muon_momentum_at(step, args.muon_momentum_start, args.muon_momentum, args.muon_momentum_warmup)
        for g in muon.param_groups:
            g["momentum"] = mom
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        for _ in range(accum):
            x, y = batches.next()
            with autocast():
                loss = fwd(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        for opt in opts:
            opt.step()
        return loss_sum / accum

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    first_loss = None
    for s in range(args.warmup):
        l = step_fn(s)
        if s == 0:
            first_loss = float(l.item())
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    last = None
    t0 = time.perf_counter()
    for s in range(args.warmup, args.warmup + args.steps):
        last = step_fn(s)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    ms = 1000.0 * elapsed / args.steps
    tok_s = args.batch_tokens * args.steps / elapsed
    fpt = train_flops_per_token(c, seq_len)
    res.update({
        "ms_per_step": ms,
        "tokens_per_s": tok_s,
        "mfu": fpt * tok_s / (args.peak_tflops * 1e12),
        "achieved_tflops": fpt * tok_s / 1e12,
        "train_flops_per_token": fpt,
        "warmup_s": warm_s,
        "first_loss": first_loss,
        "final_loss": float(last.item()) if last is not None else None,
        "train_peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
        "train_compile_mode": fwd.mode,
    })


def run_sliding_eval(model, c, args, device, seq_len, tokens, res):
    import numpy as np
    L, S, WB = seq_len, args.eval_stride, args.eval_batch
    n_targets = len(tokens) - 1
    wins = sliding_windows(n_targets, L, S)
    scored = sum(ln - sf for _, ln, sf in wins)
    if scored != n_targets:
        raise RuntimeError("window rule scores %d of %d targets" % (scored, n_targets))
    pad = (-len(wins)) % WB
    wins_p = wins + [(0, 0, 0)] * pad  # dummy windows (len 0) keep every batch the same shape
    starts = torch.tensor([w[0] for w in wins_p], dtype=torch.int64, device=device)
    lens = torch.tensor([w[1] for w in wins_p], dtype=torch.int64, device=device)
    sfrom = torch.tensor([w[2] for w in wins_p], dtype=torch.int64, device=device)
    tok = torch.from_numpy(np.asarray(tokens).astype(np.int64)).to(device)
    tok = torch.cat([tok, torch.zeros(L + 1, dtype=torch.int64, device=device)])
    ar = torch.arange(L, device=device)
    fn = Compiled(model.per_token_loss, args.compile, args.fullgraph, "per_token_loss")
    def autocast():  # a fresh context each time
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    def batch(b0, nll_sum, cnt):
        st, ln, sf = starts[b0:b0 + WB], lens[b0:b0 + WB], sfrom[b0:b0 + WB]
        idx = st[:, None] + ar[None, :]
        valid = ar[None, :] < ln[:, None]
        x = torch.where(valid, tok[idx], 0)      # zero-padded past the window's end, like the reference
        y = torch.where(valid, tok[idx + 1], 0)
        with autocast():
            nll = fn(x, y)
        m = valid & (ar[None, :] >= sf[:, None])
        nll_sum += torch.where(m, nll.double(), 0.0).sum()
        cnt += m.sum()

    n_batches = len(wins_p) // WB
    with torch.inference_mode():
        wsum = torch.zeros((), dtype=torch.float64, device=device)
        wcnt = torch.zeros((), dtype=torch.int64, device=device)
        for b in range(min(2, n_batches)):  # compile + warm-up, not timed
            batch(b * WB, wsum, wcnt)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        cnt = torch.zeros((), dtype=torch.int64, device=device)
        t0 = time.perf_counter()
        for b in range(n_batches):
            batch(b * WB, nll_sum, cnt)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    got = int(cnt.item())
    if got != n_targets:
        raise RuntimeError("sliding eval scored %d targets, expected %d" % (got, n_targets))
    processed = n_batches * WB * L
    res.update({
        "eval_tokens": n_targets,
        "eval_windows": len(wins),
        "eval_stride": S,
        "eval_batch_windows": WB,
        "eval_s": elapsed,
        "eval_tokens_per_s": n_targets / elapsed,
        "eval_processed_tokens_per_s": processed / elapsed,
        "eval_mfu": eval_flops_per_token(c, L) * processed / elapsed / (args.peak_tflops * 1e12),
        "eval_loss": float(nll_sum.item()) / n_targets,
        "eval_peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
        "eval_compile_mode": fn.mode,
    })


# ---------------------------------------------------------------------------------------------------------
# Inspection modes.
# ---------------------------------------------------------------------------------------------------------

def dump_init(path, name, c, args):
    entries = []
    source = "layout only (torch not installed: no values)"
    named = {}
    if torch is not None:
        model = build_model(c, args.seq_len or c["train_seq_len"], "cpu", args.embed_fp32, args.seed)
        named = dict(model.named_parameters())
        source = "torch model"
    for n, s, init, group in ptool_layout(c):
        e = {"name": n, "shape": s, "numel": numel(s), "init": init, "group": group}
        if n in named:
            t = named[n].detach().double()
            e.update({"dtype": str(named[n].dtype).replace("torch.", ""), "mean": t.mean().item(),
                      "std": t.std().item() if t.numel() > 1 else 0.0, "min": t.min().item(),
                      "max": t.max().item()})
        entries.append(e)
    out = {"config_name": name, "config": c, "source": source, "param_count": layout_param_count(c),
           "seed": args.seed, "tensors": entries}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote %s: %d tensors, %d parameters (%s)" % (path, len(entries), out["param_count"], source))


def check_layout_file(path, c):
    with open(path) as f:
        j = json.load(f)
    pairs = [(n, s) for n, s, _, _ in ptool_layout(c)]
    if torch is not None:  # the real module's names and shapes, in ptool's order
        model = GPT(c, c["train_seq_len"], True)
        named = dict(model.named_parameters())
        pairs = [(n, list(named[n].shape)) for n, _ in pairs if n in named]
    diffs = compare_with_inspect(pairs, j)
    if diffs:
        print("layout differs from %s:\n  %s" % (path, "\n  ".join(diffs)))
        return False
    print("layout matches %s: %d tensors" % (path, len(pairs)))
    return True


# ---------------------------------------------------------------------------------------------------------
# Pure-Python self-test (no torch, no numpy).
# ---------------------------------------------------------------------------------------------------------

def self_test():
    passed, failed = 0, 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print("FAIL: " + what)

    base = expand_config(PRESETS["baseline"])
    check(layout_param_count(base) == BASELINE_PARAMS, "baseline has %d params" % layout_param_count(base))
    check(skip_count(base) == 4 and encoder_layers(base) == 4, "baseline U-Net 4 enc / 4 skips")
    names = [n for n, _, _, _ in ptool_layout(base)]
    check(names[0] == "tok_emb.weight" and names[1] == "blocks.0.attn.c_q.weight" and names[-1] == "skip_weights",
          "baseline layout order")
    check(len(names) == len(set(names)), "unique names")
    nsc = expand_config({"norm_scale": True})
    nn_ = [n for n, _, _, _ in ptool_layout(nsc)]
    check(layout_param_count(nsc) == BASELINE_PARAMS + 9 * 2 * 512
          and nn_.index("blocks.0.attn_norm_scale") == nn_.index("blocks.0.resid_mix") + 1
          and nn_.index("blocks.0.mlp_norm_scale") + 1 == nn_.index("blocks.0.attn.q_gain"), "norm_scale layout")
    hy = expand_config(PRESETS["hybrid_recurrent"])
    check(hy["schedule"] == [0] + [1, 2, 3, 4] * 5 + [5] and hy["physical_blocks"] == 6, "hybrid schedule")
    check(scalar_sets(hy) == 22 and skip_count(hy) == 11, "hybrid scalar sets / skips")
    dq = expand_config(PRESETS["deq_loop"])
    check(rotary_dims(dq) == 16 and mlp_hidden(dq) == 2048 and "skip_gates" in [n for n, _, _, _ in ptool_layout(dq)],
          "deq_loop rope/mlp/gates")
    for name, raw in PRESETS.items():
        c = expand_config(raw)
        matrices = sum(numel(s) for _, s, _, g in ptool_layout(c) if g == "matrix")
        per_block = matrices // c["physical_blocks"]
        check(executed_matmul_params(c) == c["vocab_size"] * c["d_model"] + virtual_layers(c) * per_block,
              "preset %s executed matmul params" % name)
    for bad in ({"nope": 1}, {"d_model": 30, "n_heads": 4}, {"schedule": [0, 0], "physical_blocks": 2},
                {"schedule": [0], "recurrence": {"shared": 1, "loops": 1}}, {"rope_dims": 3},
                {"recurrence": {"shared": 1, "loops": 2, "bad": 1}}):
        try:
            expand_config(bad)
            check(False, "config %s refused" % bad)
        except ConfigError:
            check(True, "")
    # Sliding windows: every target exactly once, contexts as specified.
    for n_t, L, S in ((1, 8, 2), (7, 8, 2), (8, 8, 8), (9, 8, 8), (100, 16, 4), (1000, 64, 64), (1025, 1024, 64),
                      (5000, 1024, 64), (123457, 1024, 64)):
        cover = [0] * n_t
        ok = True
        for s, ln, sf in sliding_windows(n_t, L, S):
            ok = ok and 0 < ln <= L and s + ln <= n_t and sf < ln
            for p in range(sf, ln):
                cover[s + p] += 1  # target index s + p + 1 is the (s + p)-th target (0-based)
                ok = ok and (s == 0 or p >= L - S)
        check(ok and all(v == 1 for v in cover), "sliding windows n=%d L=%d S=%d" % (n_t, L, S))
    w = sliding_windows(1048576, 1024, 64)
    check(len(w) == -(-(1048576 - 960) // 64), "window count ceil((N-(L-S))/S)")
    # FLOPs: baseline numbers by hand.
    n_exec = 1024 * 512 + 9 * (512 * 512 * 2 + 2 * 256 * 512 + 2 * 1024 * 512)
    check(executed_matmul_params(base) == n_exec == 17039360, "baseline N_exec")
    check(train_flops_per_token(base, 1024) == 6 * 17039360 + 6 * 9 * 512 * 1024, "baseline train FLOPs/token")
    check(abs(lr_mul_step(19999, 20000, 1200) - 1 / 1200) < 1e-12 and lr_mul_step(0, 20000, 1200) == 1.0
          and lr_mul_step(18800, 20000, 1200) == 1.0, "warmdown")
    check(abs(muon_momentum_at(250, 0.85, 0.95, 500) - 0.90) < 1e-12 and muon_momentum_at(900, 0.85, 0.95, 500) == 0.95,
          "momentum warm-up")
    check(ntk_rope_base(10000.0, 16, 1024, 1024) == 10000.0
          and abs(ntk_rope_base(10000.0, 16, 2048, 1024) - 10000.0 * 2 ** (16 / 14)) < 1e-6, "NTK base")
    print("%d passed, %d failed" % (passed, failed))
    return failed == 0


# ---------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------

def _fmt(x):
    return "n/a" if x is None else "%.4f" % x


def parse_args(argv):
    p = argparse.ArgumentParser(description="PyTorch twin of ptool's model and optimizer (throughput yardstick)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="baseline", help="built-in preset: " + ", ".join(sorted(PRESETS)))
    g.add_argument("--config", help="model config JSON (ptool's keys), or a `ptool inspect --json` dump")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--embed-fp32", action="store_true",
                   help="keep the embedding in fp32 even where the config's embed_bf16 asks for bf16 (as the "
                        "reference does)")
    g = p.add_argument_group("data and batch")
    g.add_argument("--train", help="training shards (glob); default: --synthetic")
    g.add_argument("--val", help="validation shards (glob) for --eval-sliding; default: synthetic")
    g.add_argument("--synthetic", action="store_true", help="random tokens (the default without --train)")
    g.add_argument("--batch-tokens", type=int, default=524288, help="tokens per optimizer step")
    g.add_argument("--grad-accum", type=int, default=8, help="micro-batches per step")
    g.add_argument("--seq-len", type=int, default=0, help="0: the config's train_seq_len (1024 for baseline)")
    g = p.add_argument_group("timing")
    g.add_argument("--steps", type=int, default=20, help="timed training steps (0: no training)")
    g.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile")
    g.add_argument("--fullgraph", action=argparse.BooleanOptionalAction, default=True,
                   help="compile with fullgraph=True (falls back once if tracing fails)")
    g.add_argument("--sdp", choices=["flash", "auto"], default="flash",
                   help="flash: only the flash SDPA backend, like the reference; auto: PyTorch chooses")
    g.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    g = p.add_argument_group("optimizer")
    g.add_argument("--matrix-lr", type=float, default=0.04)
    g.add_argument("--scalar-lr", type=float, default=0.04)
    g.add_argument("--tied-embed-lr", type=float, default=0.05)
    g.add_argument("--embed-lr", type=float, default=0.6)
    g.add_argument("--head-lr", type=float, default=0.008)
    g.add_argument("--muon-momentum", type=float, default=0.95)
    g.add_argument("--muon-momentum-start", type=float, default=0.85)
    g.add_argument("--muon-momentum-warmup", type=int, default=500)
    g.add_argument("--ns-steps", type=int, default=5)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--iterations", type=int, default=20000, help="schedule length for the linear warmdown")
    g.add_argument("--warmdown-iters", type=int, default=1200)
    g = p.add_argument_group("sliding-window eval")
    g.add_argument("--eval-sliding", action="store_true", help="also time the sliding-window eval")
    g.add_argument("--eval-tokens", type=int, default=1048576, help="targets scored")
    g.add_argument("--eval-stride", type=int, default=64)
    g.add_argument("--eval-batch", type=int, default=32, help="windows per forward")
    g = p.add_argument_group("output and checks")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--param-count", action="store_true", help="print the parameter count and exit")
    g.add_argument("--dump-init", metavar="PATH", help="write initial parameters' names/shapes/stats and exit")
    g.add_argument("--check-layout", metavar="INSPECT_JSON",
                   help="compare names/shapes with `ptool inspect --json` of a checkpoint and exit")
    g.add_argument("--self-test", action="store_true", help="pure-Python checks and exit")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.self_test:
        return 0 if self_test() else 1
    name, c = load_config(args)
    seq_len = args.seq_len or c["train_seq_len"]

    if args.param_count or args.dump_init or args.check_layout:
        rc = 0
        if args.param_count:
            n = layout_param_count(c)
            line = "%s: %d parameters (ptool layout)" % (name, n)
            if torch is not None:
                m = GPT(c, seq_len, True)
                check_model_layout(m, c)
                nm = sum(p.numel() for p in m.parameters())
                line += ", %d in the torch model" % nm
                rc |= int(nm != n)
            if name == "baseline":
                line += " (REFERENCE 3.1: %d)" % BASELINE_PARAMS
                rc |= int(n != BASELINE_PARAMS)
            print(line)
        if args.dump_init:
            dump_init(args.dump_init, name, c, args)
        if args.check_layout:
            rc |= int(not check_layout_file(args.check_layout, c))
        return rc

    if torch is None:
        print("torch is not installed; only --self-test, --param-count, --dump-init and --check-layout work here",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if _torch_version() < (2, 4):
        print("torch >= 2.4 needed (F.rms_norm); found " + torch.__version__, file=sys.stderr)
        return 2
    micro_tokens, rem = divmod(args.batch_tokens, args.grad_accum)
    if rem or micro_tokens % seq_len or micro_tokens == 0:
        print("--batch-tokens must be a multiple of --grad-accum * seq_len (%d * %d)" % (args.grad_accum, seq_len),
              file=sys.stderr)
        return 2
    if args.steps < 0 or args.warmup < 0:
        print("--steps and --warmup must be >= 0", file=sys.stderr)
        return 2

    use_shards = bool(args.train) and not args.synthetic
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.sdp == "flash":
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(False)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)

    model = build_model(c, seq_len, device, args.embed_fp32, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    res = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "config": name,
        "params": n_params,
        "executed_matmul_params": executed_matmul_params(c),
        "virtual_layers": virtual_layers(c),
        "batch_tokens": args.batch_tokens,
        "grad_accum": args.grad_accum,
        "micro_batch": [micro_tokens // seq_len, seq_len],
        "seq_len": seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile": args.compile,
        "data": "shards" if use_shards else "synthetic",
        "peak_tflops": args.peak_tflops,
        "flops_formula": flops_formula_text(c, seq_len),
        # filled by the phases that run (None when a phase is skipped)
        "ms_per_step": None,
        "tokens_per_s": None,
        "mfu": None,
        "eval_tokens_per_s": None,
        "peak_mem_gb": None,
    }
    if not args.json:
        print("twin: %s on %s, torch %s, %d params (%d executed matmul params/token, %d virtual layers)"
              % (name, res["device"], res["torch"], n_params, res["executed_matmul_params"], res["virtual_layers"]))
        print("  batch %d tokens = %d x micro-batch %dx%d, %s data, compile=%s"
              % (args.batch_tokens, args.grad_accum, micro_tokens // seq_len, seq_len, res["data"], args.compile))

    if args.steps > 0:
        if use_shards:
            stream = TokenStream(files=shard_files(args.train))
            check_vocab(stream.tokens[:1 << 20], c["vocab_size"], stream.files[0])
        else:
            pool = max(1 << 24, 2 * (args.batch_tokens + args.grad_accum))
            stream = TokenStream(array=synthetic_tokens(pool, c["vocab_size"], args.seed))
        run_training(model, c, args, device, seq_len, micro_tokens, stream, res)
        if not args.json:
            print("  train: %.2f ms/step, %.0f tokens/s, MFU %.1f%% (%.1f TFLOP/s of %.0f peak), peak mem %.2f GB, "
                  "loss %s -> %s, warm-up %.1f s, %s"
                  % (res["ms_per_step"], res["tokens_per_s"], 100 * res["mfu"], res["achieved_tflops"],
                     args.peak_tflops, res["train_peak_mem_gb"], _fmt(res["first_loss"]), _fmt(res["final_loss"]), res["warmup_s"],
                     res["train_compile_mode"]))
            print("  " + res["flops_formula"])

    if args.eval_sliding:
        if args.val:
            toks = TokenStream(files=shard_files(args.val)).take(args.eval_tokens + 1)
            check_vocab(toks, c["vocab_size"], args.val)
        else:
            toks = synthetic_tokens(args.eval_tokens + 1, c["vocab_size"], args.seed + 1)
        run_sliding_eval(model, c, args, device, seq_len, toks, res)
        if not args.json:
            print("  sliding eval (L=%d, stride %d, %d windows/batch): %d targets in %.2f s = %.0f tokens/s scored "
                  "(%.0f processed tokens/s, MFU %.1f%%), loss %.4f (ln V = %.4f), peak mem %.2f GB, %s"
                  % (seq_len, args.eval_stride, args.eval_batch, res["eval_tokens"], res["eval_s"],
                     res["eval_tokens_per_s"], res["eval_processed_tokens_per_s"], 100 * res["eval_mfu"],
                     res["eval_loss"], math.log(c["vocab_size"]), res["eval_peak_mem_gb"], res["eval_compile_mode"]))
    peaks = [res[k] for k in ("train_peak_mem_gb", "eval_peak_mem_gb") if res.get(k) is not None]
    res["peak_mem_gb"] = max(peaks) if peaks else None
    res["command"] = " ".join(shlex.quote(a) for a in ["python3"] + sys.argv)
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
