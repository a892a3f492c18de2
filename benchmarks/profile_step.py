"""Where a training step's time goes: torch.profiler over a few compiled micro-steps of a config, set up as
bench.py sets it up, and the top kernels by device time.

    python -m benchmarks.profile_step config/train_gpt2_124m_4070.py --batch_size=16     # on a GPU
    python -m benchmarks.profile_step config/train_tiny_cpu.py --device=cpu --compile=False

Prints the machine; a micro-step's time by kind of work (matmuls, attention, the loss's softmax, inductor's fused
kernels, copies, the rest) and an optimizer step's time, profiled apart; then a table of the micro-step's `--top`
operators by self device time (CPU time on CPU).
"""
import re
import sys
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

import bench
from gptlib.errors import run_command
from gptlib.settings import load_config, setting


@dataclass
class ProfileConfig(bench.BenchConfig):
    # --- profile_step
    profiled_steps: int = setting(5, ge=1)  # micro-steps under the profiler (after warmup_iters_bench untimed ones)
    top: int = setting(15, ge=1)  # operators listed


# (kind, pattern on a CUDA kernel's or a CPU operator's name), first match wins
KINDS = (("attention", r"flash|fmha|attention|attn|sdpa"),
         ("optimizer", r"adam|multi_tensor|foreach|muon"),
         ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|sm\d\d_|aten::(mm|addmm|bmm|baddbmm|linear|matmul)_?\b"),
         ("loss softmax", r"softmax|logsumexp|nll_loss|cross_entropy|scatter|gather|aten::exp_?\b"),
         ("inductor fused", r"triton|cpp_fused|compiledfxgraph"),
         ("copy / cast / fill", r"copy|memcpy|memset|fill|cast|aten::to\b|_to_copy|cat\b|contiguous"))


def time_by_kind(events, cuda):
    """{kind: self time in ms} over the profiled events: device kernels on CUDA, operators' self CPU time on CPU
    (self times, so nothing is counted twice)."""
    from torch.autograd import DeviceType
    out = {}
    for e in events:
        if cuda and e.device_type != DeviceType.CUDA:
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        kind = next((k for k, pat in KINDS if re.search(pat, e.key, re.IGNORECASE)), "other")
        out[kind] = out.get(kind, 0.0) + us / 1000
    return out


def profiled(b, activities, fn, n):
    """fn() run n times under the profiler, ended by a device sync of bench b."""
    with profile(activities=activities) as prof:
        for _ in range(n):
            fn()
        b.clock()
    return prof.key_averages()


def main(argv):
    cfg = load_config(ProfileConfig, argv)
    b = bench.Bench(cfg)
    for _ in range(cfg.warmup_iters_bench or 1):
        b.train_step(cfg.batch_size, 1)
    cuda = b.device_type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n, trainer = cfg.profiled_steps, b.trainer()
    next_batch = lambda: b.batch(cfg.batch_size)  # noqa: E731
    # the two phases of train.py's step (gptlib/step.py) apart, so that Muon's matmuls are not counted with the
    # model's: each micro-step adds to the gradients, then one update
    micro = profiled(b, activities, lambda: trainer.accumulate(next_batch, b.values, micro_steps=1), n)
    loss_sum = trainer.accumulate(next_batch, b.values, micro_steps=1)
    opt = profiled(b, activities, lambda: trainer.update(loss_sum), 1)
    name = bench.runtime.machine_name(b.device)
    print(f"# {name}, torch {torch.__version__}, {b.dtype}, compile {b.compiled}, micro-batch {cfg.batch_size} x "
          f"{cfg.block_size}, optimizer {cfg.optimizer}; {n} micro-steps, then 1 optimizer step "
          f"({'device' if cuda else 'CPU'} time)")
    kinds = time_by_kind(micro, cuda)
    total = sum(kinds.values())
    print(f"{'micro-step, by kind':<22} {'ms':>8} {'share':>7}")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<22} {ms / n:8.2f} {ms / max(total, 1e-9):7.1%}")
    print(f"{'micro-step total':<22} {total / n:8.2f}")
    print(f"{'optimizer step total':<22} {sum(time_by_kind(opt, cuda).values()):8.2f}")
    print(micro.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=cfg.top))


if __name__ == "__main__":
    sys.exit(run_command(main))
