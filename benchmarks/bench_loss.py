"""The head + cross-entropy alone, forward and backward: time, peak memory and exactness of each implementation.

    python -m benchmarks.bench_loss                                  # CPU: the project's op, eager and compiled
    python -m benchmarks.bench_loss --device=cuda --rows=16384       # GPU, bf16 autocast, plus liger / cut-cross-entropy

x (rows, n_embd) fp32 as the final norm hands it over, weight (vocab, n_embd) fp32 as the parameter, targets with
every 9th row ignored (-1). Implementations ('impls', comma-separated):
  project           gptlib.head_loss.head_loss in eager mode (torch.library.custom_op, chunked, gradients in the forward)
  project_compiled  the same inside torch.compile (the per-chunk softmax becomes inductor kernels)
  project_fixed_vocab  the same, with the per-chunk kernels compiled for a fixed vocab width and any number of
                    rows, instead of head_loss.py's dynamic=True (both symbolic): a candidate for the CUDA path, to be
                    measured on a GPU (a symbolic width leaves each element's row index to a division by a
                    runtime value, and Triton without 16-byte divisibility hints: pytorch/pytorch#177061)
  full_compiled     logits = x @ weight.T then F.cross_entropy, compiled: what nanoGPT computes
  full_eager        the same, eager
  liger             liger-kernel's LigerFusedLinearCrossEntropyLoss (CUDA, if installed)
  cce               cut-cross-entropy's linear_cross_entropy (CUDA, if installed; it filters small gradients)
Exactness is against fp32 logits and F.cross_entropy (no autocast): the loss's absolute error, and each
gradient's largest error relative to its largest entry.
"""
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptlib import runtime
from gptlib.errors import ConfigError, run_command
from gptlib.settings import load_config, setting

ALL_IMPLS = ("project", "project_compiled", "project_fixed_vocab", "full_compiled", "full_eager", "liger", "cce")


@dataclass
class LossBenchConfig:
    device: str = setting("cpu", pattern=r"cpu|cuda(:\d+)?")  # where to measure
    rows: int = setting(4096, ge=1)  # micro-batch x block_size positions
    n_embd: int = setting(768, ge=1)  # width of the hidden states
    vocab_size: int = setting(50304, ge=2)  # rows of the head
    dtype: str = setting("auto", choices=["auto", "float32", "bfloat16", "float16"])  # autocast dtype; auto: bf16 on GPU
    iters: int = setting(10, ge=1)  # timed forward+backward passes (after 2 warm-up passes)
    impls: str = setting(",".join(ALL_IMPLS))  # which implementations, comma-separated
    chunk: int = setting(0, ge=0)  # head_loss.LOSS_CHUNK for the project's op; 0: gptlib/head_loss.py's default
    json: bool = setting(False)  # one JSON line per implementation


def make_impl(name, softcap=0.0):
    """name -> f(x, weight, targets) -> mean loss, or a reason it cannot run here (str)."""
    from gptlib import head_loss as hl
    if name == "project":
        return lambda x, w, y: hl.head_loss(x, w, y, softcap)
    if name in ("project_compiled", "project_fixed_vocab"):
        return torch.compile(lambda x, w, y: hl.head_loss(x, w, y, softcap))

    def full(x, w, y):
        return F.cross_entropy((x @ w.t()).float(), y, ignore_index=-1)
    if name == "full_eager":
        return full
    if name == "full_compiled":
        return torch.compile(full)
    if name == "liger":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError as e:
            return f"liger-kernel not importable ({e})"
        fn = LigerFusedLinearCrossEntropyLoss(ignore_index=-1)
        return lambda x, w, y: fn(w.to(_lowp()), x.to(_lowp()), y)  # it takes the weight first, both in one dtype
    if name == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError as e:
            return f"cut-cross-entropy not importable ({e})"
        return lambda x, w, y: linear_cross_entropy(x.to(_lowp()), w.to(_lowp()), y, ignore_index=-1)
    raise ConfigError(f"impls: unknown implementation {name!r}; choose from {', '.join(ALL_IMPLS)}")


@contextlib.contextmanager
def chunk_kernels(name):
    """project_fixed_vocab: head_loss.py's per-chunk kernels swapped for ones compiled with only the rows dynamic.
    Yields a list that gets one entry per chunk those kernels ran (empty: the swap did not take)."""
    from gptlib import head_loss as hl
    calls = []
    if name != "project_fixed_vocab":
        yield calls
        return
    kept = hl._fused_chunk_loss
    compiled = torch.compile(hl._chunk_loss_fusible)  # dims that never change (the vocab) stay fixed

    def rows_dynamic(z, y, w, scale, softcap, want_grad):
        calls.append(z.size(0))
        for t in (z, y, scale):
            torch._dynamo.maybe_mark_dynamic(t, 0)  # one graph for every chunk length, as head_loss.py's
        return compiled(z, y, w, scale, softcap, want_grad)
    hl._fused_chunk_loss = rows_dynamic
    try:
        yield calls
    finally:
        hl._fused_chunk_loss = kept


def _lowp():
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32


def reference(x, w, y):
    """fp32 logits and F.cross_entropy: the loss and gradients every implementation should give."""
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy(xr @ wr.t(), y, ignore_index=-1)
    loss.backward()
    return loss.item(), xr.grad, wr.grad


def measure(name, fn, x, w, y, ctx, cfg, ref):
    cuda = cfg.device.startswith("cuda")

    def step():
        x.grad = w.grad = None
        with ctx:
            loss = fn(x, w, y)
        loss.backward()
        return loss
    try:
        for _ in range(2):  # warm-up: compilation, autotuning, allocator
            step()
        runtime.synchronize(cfg.device)
        if cuda:
            x.grad = w.grad = None
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        times = []
        for _ in range(cfg.iters):
            t0 = time.perf_counter()
            loss = step()
            runtime.synchronize(cfg.device)
            times.append(1000 * (time.perf_counter() - t0))
    except Exception as e:  # an implementation that fails here is reported, the others still run
        return {"impl": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    ref_loss, ref_gx, ref_gw = ref
    return {"impl": name, "ms": round(statistics.median(times), 3),
            "peak_above_inputs_mib": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1) if cuda else None,
            "loss_err": abs(loss.item() - ref_loss),
            "grad_x_rel_err": ((x.grad.float() - ref_gx).abs().max() / ref_gx.abs().max()).item(),
            "grad_w_rel_err": ((w.grad.float() - ref_gw).abs().max() / ref_gw.abs().max()).item()}


def main(argv):
    cfg = load_config(LossBenchConfig, argv)
    from gptlib import head_loss as hl
    if cfg.chunk:
        hl.LOSS_CHUNK = cfg.chunk
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(device, cfg.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    ctx = runtime.autocast(device, dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.rows, cfg.n_embd, generator=gen).to(device).requires_grad_()
    w = (0.02 * torch.randn(cfg.vocab_size, cfg.n_embd, generator=gen)).to(device).requires_grad_()
    y = torch.randint(0, cfg.vocab_size, (cfg.rows,), generator=gen)
    y[::9] = -1
    y = y.to(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    ref = reference(x, w, y)
    torch.backends.cuda.matmul.allow_tf32 = True
    machine = runtime.machine_name(device)
    print(f"# {machine}, torch {torch.__version__}, {dtype}, rows {cfg.rows}, n_embd {cfg.n_embd}, vocab "
          f"{cfg.vocab_size}, LOSS_CHUNK {hl.LOSS_CHUNK}", file=sys.stderr)
    for name in [s.strip() for s in cfg.impls.split(",") if s.strip()]:
        fn = make_impl(name)
        with chunk_kernels(name) as calls:
            r = {"impl": name, "skipped": fn} if isinstance(fn, str) else measure(name, fn, x, w, y, ctx, cfg, ref)
        if name == "project_fixed_vocab" and "ms" in r and not calls:
            r = {"impl": name, "error": "the op did not run the swapped per-chunk kernels: gptlib/head_loss.py has changed"}
        r.update(device=machine, torch=torch.__version__, dtype=dtype, rows=cfg.rows, chunk=hl.LOSS_CHUNK)
        if cfg.json:
            print(json.dumps(r), flush=True)
        elif "ms" in r:
            mem = "n/a" if r["peak_above_inputs_mib"] is None else f"{r['peak_above_inputs_mib']:8.1f} MiB"
            print(f"{name:<17} {r['ms']:9.3f} ms  peak {mem}  loss err {r['loss_err']:.1e}  grad_x {r['grad_x_rel_err']:.1e}"
                  f"  grad_w {r['grad_w_rel_err']:.1e}", flush=True)
        else:
            print(f"{name:<17} {r.get('skipped') or r.get('error')}", flush=True)


if __name__ == "__main__":
    sys.exit(run_command(main))
