#!/usr/bin/env python3
"""ptool's CPU path against the PyTorch twin, number for number, in fp32 (bench/TWIN.md, "Numeric parity").

For each case (a small config covering a set of features), build/twin_parity_dump trains a few steps on ptool's
CPU backend and writes its initial weights, tokens, first gradient, losses and final weights. This script loads
the same weights into bench/torch_twin.py's GPT (fp32, no autocast), runs the same steps with the twin's
optimizers (fp32 Newton-Schulz and update buffer, unfused Adam) and compares:
  - the first batch's mean loss (relative 2e-6) and its gradient (per tensor, within 2e-4 of the tensor's largest
    |gradient|): PyTorch's autograd against ptool's hand-written backward, and the forward semantics (RoPE,
    GQA head mapping, QK-norm, q_gain, resid_mix, skips, softcap, ...) of two independent implementations;
  - every step's loss (relative 1e-4) and the final weights (per tensor, within 2e-2 of the tensor's largest
    |change|): Muon and Adam.
The bounds leave room for fp32 summation order only; a semantic difference misses them by orders of magnitude.
Needs torch (any version from 1.13: F.rms_norm and SDPA are shimmed as in bench/twin_cpu_smoke.py) and numpy.

  python3 bench/twin_parity.py --build build            # exit 0 when every case is within its bounds
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_twin as twin  # noqa: E402
from twin_cpu_smoke import causal_sdpa, rms_norm  # noqa: E402

if not hasattr(F, "rms_norm"):
    F.rms_norm = rms_norm
if not hasattr(F, "scaled_dot_product_attention"):
    F.scaled_dot_product_attention = causal_sdpa

SMALL = {"vocab_size": 96, "d_model": 48, "n_heads": 4, "n_kv_heads": 2, "mlp_mult": 2, "train_seq_len": 32}

# name -> (config overrides on SMALL, seq_len)
CASES = {
    "plain U-Net, GQA, QK-norm, full RoPE": ({"physical_blocks": 4}, 24),
    "recurrent: gated skips, per-virtual scalars": (
        {"recurrence": {"entry": 1, "shared": 1, "loops": 3, "exit": 1}, "per_virtual_scalars": True,
         "skips": "gated"}, 24),
    "leaky_relu2, partial RoPE, ln_scale, norm_scale, untied head, T > train_seq_len (NTK)": (
        {"physical_blocks": 3, "schedule": [0, 1, 2, 1, 2], "activation": "leaky_relu2", "rope_dims": 4,
         "ln_scale": True, "norm_scale": True, "tie_embeddings": False, "logit_softcap": 15.0,
         "train_seq_len": 16}, 24),
    "XSA in the last 3 of 5 layers (GQA groups of 2 heads), a looped block with and without it": (
        {"physical_blocks": 3, "schedule": [0, 1, 2, 1, 2], "xsa_last": 3}, 24),
    "value embeddings in the last 2 of 5 layers": (
        {"physical_blocks": 3, "schedule": [0, 1, 2, 1, 2], "ve_dim": 8, "ve_last": 2}, 24),
    "bigram hash and smear gate at the embedding": (
        {"physical_blocks": 2, "bigram_buckets": 37, "bigram_dim": 8, "smear_gate": True}, 24),
    "no QK-norm, no resid_mix, no skips, MHA, no softcap": (
        {"physical_blocks": 2, "qk_norm": False, "resid_mix": False, "skips": "none", "n_kv_heads": 4,
         "logit_softcap": 0.0}, 24),
}


def share(got, want, scale):
    """Largest |got - want| as a share of scale."""
    return float(np.max(np.abs(got - want))) / max(scale, 1e-30)


def run_case(index, name, overrides, seq, args, tmp):
    raw = dict(SMALL)
    raw.update(overrides)
    d = os.path.join(tmp, "case%d" % index)
    os.makedirs(d)
    with open(os.path.join(d, "in.json"), "w") as f:
        json.dump(raw, f)
    subprocess.run([os.path.join(args.build, "twin_parity_dump"), "--config", os.path.join(d, "in.json"),
                    "--out", d, "--batch", str(args.batch), "--seq", str(seq), "--steps", str(args.steps)],
                   check=True)
    res = json.load(open(os.path.join(d, "result.json")))
    c = twin.expand_config(json.load(open(os.path.join(d, "config.json"))))
    layout = json.load(open(os.path.join(d, "layout.json")))
    w0 = np.fromfile(os.path.join(d, "weights0.f32"), dtype="<f4")
    g0 = np.fromfile(os.path.join(d, "grads0.f32"), dtype="<f4")
    w1 = np.fromfile(os.path.join(d, "weights_final.f32"), dtype="<f4")
    B, T, K = res["batch"], res["seq"], res["steps"]
    tokens = np.fromfile(os.path.join(d, "tokens.i32"), dtype="<i4").reshape(K, B, T + 1)

    torch.manual_seed(0)
    model = twin.GPT(c, T, use_gqa_kwarg=twin._torch_version() >= (2, 5)).float()
    named = dict(model.named_parameters())
    if sorted(named) != sorted(e["name"] for e in layout):
        raise RuntimeError("the twin's parameters are not ptool's layout")

    def tensor_of(flat, e):
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        return flat[e["offset"]:e["offset"] + n].reshape(e["shape"])

    with torch.no_grad():
        for e in layout:
            named[e["name"]].copy_(torch.from_numpy(tensor_of(w0, e).copy()))
    opt_args = twin.parse_args([])
    for k in ("matrix_lr", "muon_momentum", "ns_steps", "tied_embed_lr", "embed_lr", "head_lr", "scalar_lr",
              "beta1", "beta2", "adam_eps"):
        setattr(opt_args, k, res[k])
    ns_fp32 = lambda G, steps: twin.newton_schulz5(G, steps, dtype=torch.float32)  # noqa: E731
    opts, _ = twin.make_optimizers(model, c, opt_args, ns_fp32, update_dtype=torch.float32, fused=False)

    worst = {"loss0": 0.0, "grad": 0.0, "losses": 0.0, "weights": 0.0}
    where = {}
    for s in range(K):
        x = torch.from_numpy(tokens[s, :, :T].astype(np.int64))
        y = torch.from_numpy(tokens[s, :, 1:].astype(np.int64))
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        rel = abs(loss.item() - res["losses"][s]) / abs(res["losses"][s])
        if s == 0:
            worst["loss0"] = rel / 2e-6
            for e in layout:
                want = tensor_of(g0, e)
                got = named[e["name"]].grad.numpy()
                sh = share(got, want, float(np.max(np.abs(want)))) / 2e-4
                if sh > worst["grad"]:
                    worst["grad"], where["grad"] = sh, e["name"]
        if rel / 1e-4 > worst["losses"]:
            worst["losses"], where["losses"] = rel / 1e-4, "step %d" % s
        for o in opts:
            o.step()
    for e in layout:
        want = tensor_of(w1, e)
        got = named[e["name"]].detach().numpy()
        moved = float(np.max(np.abs(want - tensor_of(w0, e))))
        sh = share(got, want, moved) / 2e-2
        if sh > worst["weights"]:
            worst["weights"], where["weights"] = sh, e["name"]
    ok = all(v <= 1.0 for v in worst.values())
    print("%s %s" % ("ok  " if ok else "FAIL", name))
    for k, v in worst.items():
        print("       %-8s %8.2f%% of its bound%s" % (k, 100 * v, "  (" + where[k] + ")" if k in where else ""))
    print("       losses: ptool %s" % " ".join("%.7f" % v for v in res["losses"]))
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build", help="the build folder holding twin_parity_dump")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)  # a fixed summation order run to run
    print("torch %s; fp32 on the CPU" % torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(i, n, o, t, args, tmp) for i, (n, (o, t)) in enumerate(CASES.items())]
    print("%d of %d cases within bounds" % (sum(results), len(results)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
