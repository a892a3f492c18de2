"""Causal attention alone, forward + backward, through each of PyTorch's SDPA backends: which one is fastest on
this card at GPT-2's shapes, and how close each comes to the card's peak (issue 16: MFU 39.6% on an H200, target
50%; attention is the part of the step whose kernel PyTorch picks for us).

    python -m benchmarks.bench_attention                          # on a GPU: B 16, 12 heads x 64, T 1024, bf16
    python -m benchmarks.bench_attention --device=cpu --batch_size=2 --iters=2

Backends ('backends', comma-separated): default (what F.scaled_dot_product_attention picks, as model.py calls it),
flash, efficient, cudnn, math. A backend this build or card does not offer is reported as skipped. Every
backend's output and input gradients are compared with the math backend's in fp32.
"""
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptlib import runtime
from gptlib.errors import ConfigError, run_command
from gptlib.settings import load_config, setting

BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class AttentionBenchConfig:
    device: str = setting("auto", pattern=r"auto|cpu|cuda(:\d+)?")  # where to measure
    batch_size: int = setting(16, ge=1)  # micro-batch
    n_head: int = setting(12, ge=1)  # heads (GPT-2 small)
    head_size: int = setting(64, ge=1)  # channels per head (GPT-2 small: 768 / 12)
    block_size: int = setting(1024, ge=1)  # sequence length
    dtype: str = setting("auto", choices=["auto", "float32", "bfloat16", "float16"])  # auto: bf16 where supported
    iters: int = setting(20, ge=1)  # timed forward + backward passes, after 3 warm-up passes
    backends: str = setting(",".join(BACKENDS))  # which backends, comma-separated
    json: bool = setting(False)  # one JSON line per backend


def causal_flops(cfg):
    """Forward + backward FLOPs of causal attention: QK^T and PV are 2 x 2 B nh T^2 hs in the forward, half of it
    under the mask; the backward is 2.5x the forward (FlashAttention-2 paper's count)."""
    fwd = 4 * cfg.batch_size * cfg.n_head * cfg.block_size ** 2 * cfg.head_size / 2
    return 3.5 * fwd


def run(q, k, v, backend):
    """Output and the gradients of q, k, v for a fixed upstream gradient, through one backend (None: default)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    if backend is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        with sdpa_kernel([backend]):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y.backward(torch.ones_like(y) / y.numel() ** 0.5)
    return y, q.grad, k.grad, v.grad


def measure(name, q, k, v, ref, cfg, device):
    backend = BACKENDS[name]
    try:
        for _ in range(3):
            out = run(q, k, v, backend)
        times = []
        for _ in range(cfg.iters):
            runtime.synchronize(device)
            t0 = time.perf_counter()
            run(q, k, v, backend)
            runtime.synchronize(device)
            times.append(1000 * (time.perf_counter() - t0))
    except RuntimeError as e:  # "No available kernel" and the like: this build or card lacks the backend
        return {"backend": name, "skipped": str(e).strip().splitlines()[0][:200]}
    ms = statistics.median(times)
    errs = [((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(out, ref)]
    return {"backend": name, "ms": round(ms, 3), "tflops": float(f"{causal_flops(cfg) / ms / 1e9:.3g}"),
            "max_rel_err": float(f"{max(errs):.2e}")}


def main(argv):
    cfg = load_config(AttentionBenchConfig, argv)
    names = [s.strip() for s in cfg.backends.split(",") if s.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ConfigError(f"backends: unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    device = runtime.pick_device(cfg.device)
    dtype_name = runtime.pick_dtype(device, cfg.dtype)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, cfg.n_head, cfg.block_size, cfg.head_size)  # (B, nh, T, hs), as model.py calls it
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    ref = [t.float() for t in run(q.float(), k.float(), v.float(), SDPBackend.MATH)]  # fp32 math: the reference
    machine = runtime.machine_name(device)
    print(f"# {machine}, torch {torch.__version__}, {dtype_name}, B {cfg.batch_size}, heads {cfg.n_head} x "
          f"{cfg.head_size}, T {cfg.block_size}, causal, forward + backward ({causal_flops(cfg) / 1e9:.1f} GFLOP)",
          file=sys.stderr)
    for name in names:
        r = measure(name, q, k, v, ref, cfg, device)
        r.update(device=machine, torch=torch.__version__, dtype=dtype_name,
                 shape=list(shape))
        if cfg.json:
            print(json.dumps(r), flush=True)
        elif "ms" in r:
            print(f"{name:<10} {r['ms']:9.3f} ms  {r['tflops']:7.1f} TFLOP/s  max rel err {r['max_rel_err']:.1e}",
                  flush=True)
        else:
            print(f"{name:<10} skipped: {r['skipped']}", flush=True)


if __name__ == "__main__":
    sys.exit(run_command(main))
