#!/usr/bin/env python3
"""Runs bench/torch_twin.py on a machine without a GPU, for a smoke test of its torch code before a GPU session.

The twin needs CUDA and torch >= 2.4. This runs its source with: the device and autocast on the CPU, torch.cuda's
calls the twin makes answered as no-ops, Adam unfused, and, where this torch lacks them (Debian 12's python3-torch
is 1.13), F.rms_norm and F.scaled_dot_product_attention in plain torch. Timings mean nothing; what it shows is that
the model, Muon, the training loop, the shard reader and the sliding eval run end to end. Use --no-compile and
--sdp auto (torch.compile and the SDPA backend switches are CUDA or torch 2 features). Example:

  /usr/bin/python3 bench/twin_cpu_smoke.py --preset baseline --synthetic --batch-tokens 2048 --grad-accum 2 \\
      --seq-len 256 --steps 2 --warmup 1 --no-compile --sdp auto --eval-sliding --eval-tokens 1024 --eval-batch 4
"""
import math
import os
import sys

import torch
import torch.nn.functional as F


def rms_norm(x, shape, weight=None, eps=None):
    assert weight is None and tuple(shape) == (x.size(-1),)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


def causal_sdpa(q, k, v, is_causal=False, enable_gqa=False):
    assert is_causal
    if enable_gqa:
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    T = q.size(-2)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


def main():
    if not hasattr(F, "rms_norm"):
        F.rms_norm = rms_norm
    if not hasattr(F, "scaled_dot_product_attention"):
        F.scaled_dot_product_attention = causal_sdpa
    torch.cuda.is_available = lambda: True
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.get_device_name = lambda *a, **k: "cpu (twin_cpu_smoke)"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_twin.py")
    src = open(path).read()
    for old, new in (('torch.device("cuda")', 'torch.device("cpu")'), ('device_type="cuda"', 'device_type="cpu"'),
                     ("fused=True", "fused=False"), ("if _torch_version() < (2, 4):", "if False:")):
        if old not in src:
            sys.exit("twin_cpu_smoke: bench/torch_twin.py no longer contains " + repr(old) + "; update the patch")
        src = src.replace(old, new)
    sys.argv = [path] + sys.argv[1:]
    exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path})


if __name__ == "__main__":
    main()
