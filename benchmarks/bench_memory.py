"""Peak memory of what a run does at one micro-batch: a training step with the chunked head+loss (gptlib/head_loss.py)
against one over full logits, an eval batch, and HellaSwag's largest batch of scored rows (issues 12, 16).

    python -m benchmarks.bench_memory                                          # CPU, fp32, eager
    python -m benchmarks.bench_memory --compile=True --dtype=bfloat16          # CPU, what a GPU run computes
    python -m benchmarks.bench_memory --device=cuda --compile=True --memory_gib=12   # GPU, as a 12 GB card

Each case runs in a fresh process and reports its peak above the memory the model, its gradients and the
batch already hold (CPU: resident set; CUDA: torch.cuda.max_memory_allocated):
  train-full     forward + backward, loss = F.cross_entropy over (B*T, vocab) logits (nanoGPT's way)
  train-chunked  forward + backward, model(x, y): the chunked head+loss op
  eval-full      no_grad forward over full logits        eval-chunked   no_grad model(x, y), as train.py evaluates
  hellaswag      no_grad model.token_losses on the 32 rows HellaSwag scores at once (8 items x 4 endings)
  ckpt-MODE      train-chunked with activation checkpointing MODE (none, selective, full), beside what the planner
                 (gptlib/memory.py) predicts for it: issue 27's target is within 15%
Training steps run under torch.compile with --compile=True and under autocast with --dtype; evals run the raw
model, as train.py does.
"""
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

from gptlib import runtime
from gptlib.errors import run_command
from gptlib.settings import load_config, setting

CASES = ("train-full", "train-chunked", "eval-full", "eval-chunked", "hellaswag")
CHECKPOINTING = ("none", "selective", "full")  # runtime.CHECKPOINTING: train-chunked under each (ckpt-MODE cases)
HELLASWAG_ROWS = 32  # gptlib.evals scores 8 items x 4 endings per batch
# CPU: glibc serves every allocation over 64 KB with its own mmap and unmaps it when freed, so the resident set
# follows live tensors. Its default threshold adapts upward after the warm-up step's frees, after which the step
# reuses pages already resident and its peak above them read 13-41% low (issue 27: 1,673 MB for none at 12 x 512,
# 2,147 with this setting).
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass
class MemoryConfig:
    n_layer: int = setting(4, ge=1)  # model depth (the logits, not the depth, are what this measures)
    n_embd: int = setting(768, ge=1)  # width (GPT-2 small's)
    n_head: int = setting(12, ge=1)  # heads
    batch_size: int = setting(4, ge=1)  # the micro-batch both train and eval use
    block_size: int = setting(1024, ge=1)  # context
    device: str = setting("cpu", pattern=r"cpu|cuda(:\d+)?")  # where to measure
    dtype: str = setting("float32", choices=["float32", "bfloat16", "float16"])  # autocast dtype of every case
    compile: bool = setting(False)  # torch.compile the training steps (evals run the raw model, as train.py)
    memory_gib: float = setting(0.0, ge=0)  # CUDA: cap the allocator as on a card of this many GiB (0: the whole card)
    loss_chunk: int = setting(0, ge=0)  # rows per chunk of the head+loss (hl.LOSS_CHUNK); 0: head_loss.py's
    case: str = setting("")  # internal: run one case and print its peak


def peak_mb(device):
    """The peak since reset_peak(): CUDA allocator peak, or the process's resident-set high-water mark."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB


def reset_peak(device):
    """Start a new peak: the warm-up step (and compilation) before it is not part of what is measured."""
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: 5 resets the high-water mark VmHWM
            f.write("5")


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_case(cfg):
    import torch
    import torch.nn.functional as F
    from gptlib import head_loss
    from model import GPT, GPTConfig
    if cfg.loss_chunk:
        head_loss.LOSS_CHUNK = cfg.loss_chunk
    mode, _, path = cfg.case.partition("-")
    checkpointing = path if mode == "ckpt" else "none"
    mode, path = ("train", "chunked") if mode == "ckpt" else (mode, path)
    cuda = cfg.device.startswith("cuda")
    if cuda and cfg.memory_gib:
        import bench
        bench.cap_memory(cfg.device, cfg.memory_gib)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          vocab_size=50304)).to(cfg.device)
    runtime.checkpoint_blocks(model, checkpointing)  # as train.py wraps its blocks
    rows = HELLASWAG_ROWS if mode == "hellaswag" else cfg.batch_size
    x = torch.randint(0, 50257, (rows, cfg.block_size), device=cfg.device)
    y = torch.randint(0, 50257, (rows, cfg.block_size), device=cfg.device)
    ctx = runtime.autocast(cfg.device, cfg.dtype)

    def loss_of(m):
        if path != "full":
            return m(x, y)[1]
        logits = m.lm_head(m._hidden(x))  # (B, T, V): nanoGPT's path
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    if mode == "train":
        step = torch.compile(loss_of) if cfg.compile else loss_of
        for p in model.parameters():  # gradients exist from the first step on: allocate them before the baseline
            p.grad = torch.zeros_like(p)
        with ctx:  # compile (and warm) outside the measurement: the compiler's own memory is not the step's
            step(model).backward()
    reset_peak(cfg.device)
    base = peak_mb(cfg.device) if cuda else current_rss_mb()
    with ctx:
        if mode == "train":
            step(model).backward()
        elif mode == "hellaswag":
            with torch.no_grad():
                model.token_losses(x, y)
        else:
            with torch.no_grad():
                loss_of(model)
    print(json.dumps({"case": cfg.case, "peak_mb": peak_mb(cfg.device) - base}))


def main(argv):
    cfg = load_config(MemoryConfig, argv)
    if cfg.case:
        return one_case(cfg)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for case in CASES + tuple(f"ckpt-{m}" for m in CHECKPOINTING):
        print(f"bench_memory: {case} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", *argv, f"--case={case}"], cwd=repo,
                             capture_output=True, text=True, env={**os.environ, **MEASURE_ENV})
        if out.returncode:
            raise RuntimeError(f"case {case} failed: {out.stderr.strip().splitlines()[-1:]}")
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    import torch
    where = runtime.machine_name(cfg.device)
    card = f", as a {cfg.memory_gib:g} GiB card" if cfg.memory_gib else ""
    from gptlib import head_loss as hl
    print(f"machine: {where}, {os.cpu_count()} cores, torch {torch.__version__}; device {cfg.device}{card}; "
          f"loss chunk {cfg.loss_chunk or hl.LOSS_CHUNK} rows; "
          f"{cfg.dtype}, training steps {'compiled' if cfg.compile else 'eager'}; model {cfg.n_layer}x{cfg.n_embd}; "
          f"micro-batch {cfg.batch_size} x {cfg.block_size}; peak memory above the model, gradients and batch:")
    print(f"  train step  full logits {results['train-full']:8,.0f} MB   chunked {results['train-chunked']:8,.0f} MB")
    print(f"  eval        full logits {results['eval-full']:8,.0f} MB   chunked {results['eval-chunked']:8,.0f} MB")
    print(f"  HellaSwag   {HELLASWAG_ROWS} rows (chunked) {results['hellaswag']:8,.0f} MB")
    from gptlib import memory
    from model import GPTConfig
    shape = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      vocab_size=50304)
    planned = {}
    for m in CHECKPOINTING:
        planned[m] = memory.activation_bytes(shape, cfg.batch_size, cfg.block_size, m, cfg.dtype, cfg.compile) / 2**20
        got = results[f"ckpt-{m}"]
        print(f"  activation checkpointing {m:<9} {got:8,.0f} MB measured, {planned[m]:8,.0f} MB planned "
              f"({planned[m] / got - 1:+.0%})")
    print(json.dumps({"bench_memory": results, "planned_activations_mb": planned, "device": where, "torch": torch.__version__, "dtype": cfg.dtype,
                      "compile": cfg.compile, "memory_gib": cfg.memory_gib or None}))


if __name__ == "__main__":
    sys.exit(run_command(main))
