"""Where a training step's time goes: torch.profiler over a few compiled micro-steps of a config, set up as
bench.py sets it up, and the top kernels by device time.

    python -m benchmarks.profile_step config/train_gpt2_124m_4070.py --batch_size=16     # on a GPU
    python -m benchmarks.profile_step config/train_tiny_cpu.py --device=cpu --compile=False

Prints the machine, then a table of the `--top` operators by self device time (CPU time on CPU).
"""
import sys
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

import bench
from gptlib.errors import run_command
from gptlib.settings import load_config, setting


@dataclass
class ProfileConfig(bench.BenchConfig):
    profiled_steps: int = setting(5, ge=1)  # micro-steps under the profiler (after warmup_iters_bench untimed ones)
    top: int = setting(15, ge=1)  # operators listed


def main(argv):
    cfg = load_config(ProfileConfig, argv)
    b = bench.Bench(cfg)
    for _ in range(cfg.warmup_iters_bench or 1):
        b.micro_step(cfg.batch_size, 1)
        b.optimizer_step()
    cuda = b.device_type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(cfg.profiled_steps):
            b.micro_step(cfg.batch_size, 1)
            b.optimizer_step()
        b.clock()
    name = torch.cuda.get_device_name(b.device) if cuda else bench.runtime.cpu_name()
    print(f"# {name}, torch {torch.__version__}, {b.dtype}, compile {b.compiled}, micro-batch {cfg.batch_size} x "
          f"{cfg.block_size}, {cfg.profiled_steps} micro-steps + optimizer steps")
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=cfg.top))


if __name__ == "__main__":
    sys.exit(run_command(main))
