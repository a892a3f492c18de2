"""Peak memory of eval against a training step at the same micro-batch, with the loss over full logits (the
old path) and with model.py's chunked head+loss (issue 12: eval ran out of memory where training fit).

    python -m benchmarks.bench_memory                       # CPU: peak RSS, each case in a fresh process
    python -m benchmarks.bench_memory --device=cuda         # GPU: torch.cuda.max_memory_allocated

Each case runs in its own process and reports its peak above the process's memory after the model and
batch are built: a training step (forward, backward) or an eval forward (no_grad), at batch_size x
block_size. 'full' computes the loss as the code did before (B*T x vocab logits, then fp32 cross-entropy);
'chunked' is today's model(x, y).
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


@dataclass
class MemoryConfig:
    n_layer: int = setting(4, ge=1)  # model depth (the logits, not the depth, are what this measures)
    n_embd: int = setting(768, ge=1)  # width (GPT-2 small's)
    n_head: int = setting(12, ge=1)  # heads
    batch_size: int = setting(4, ge=1)  # the micro-batch both train and eval use
    block_size: int = setting(1024, ge=1)  # context
    device: str = setting("cpu", pattern=r"cpu|cuda(:\d+)?")  # where to measure
    case: str = setting("")  # internal: run one case ('train-full', 'eval-chunked', ...) and print its peak


def peak_mb(device):
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def one_case(cfg):
    import torch
    import torch.nn.functional as F
    from model import GPT, GPTConfig
    mode, path = cfg.case.split("-")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                          vocab_size=50304)).to(cfg.device)
    x = torch.randint(0, 50257, (cfg.batch_size, cfg.block_size), device=cfg.device)
    y = torch.randint(0, 50257, (cfg.batch_size, cfg.block_size), device=cfg.device)
    if mode == "train":  # gradients exist from the first step on: allocate them before the baseline
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_mb(cfg.device) if cfg.device.startswith("cuda") else current_rss_mb()

    def loss_of():
        if path == "chunked":
            return model(x, y)[1]
        logits = model.lm_head(model._hidden(x))  # (B, T, V): the old path
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
    if mode == "train":
        loss_of().backward()
    else:
        with torch.no_grad():
            loss_of()
    print(json.dumps({"case": cfg.case, "peak_mb": peak_mb(cfg.device) - base}))


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv):
    cfg = load_config(MemoryConfig, argv)
    if cfg.case:
        return one_case(cfg)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for case in ("train-full", "eval-full", "train-chunked", "eval-chunked"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", *argv, f"--case={case}"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    where = runtime.cpu_name()
    if cfg.device.startswith("cuda"):
        import torch
        where = torch.cuda.get_device_name(cfg.device)
    print(f"machine: {where}, {os.cpu_count()} cores; device {cfg.device}; model {cfg.n_layer}x{cfg.n_embd}; "
          f"micro-batch {cfg.batch_size} x {cfg.block_size}; peak memory above the model and batch:")
    for path in ("full", "chunked"):
        print(f"  {path:<8} train step {results['train-' + path]:8,.0f} MB   eval {results['eval-' + path]:8,.0f} MB")


if __name__ == "__main__":
    sys.exit(run_command(main))
