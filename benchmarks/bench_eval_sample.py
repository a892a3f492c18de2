"""How many val tokens an eval needs: the spread of per-window losses of a trained model over a whole split, and
how far an eval of N tokens lands from the whole split's loss, for windows at even strides (train.py's
eval_tokens) and for the split's first N tokens (what train.py read before issue 19).

    python -m benchmarks.bench_eval_sample --out_dir=out-tiny --data_dir=data/stdlib
    python -m benchmarks.bench_eval_sample --out_dir=out-fw --data_dir=data/fineweb_sample --sizes=16384,131072

Every window of the split is scored once (block_size inputs each); the samples are then subsets of those
windows, so the comparison has no noise of its own. Prints a table and one JSON line.
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from gptlib import evals, runtime, shards
from gptlib.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlib.errors import run_command
from gptlib.loader import TokenLoader
from gptlib.settings import load_config, setting


@dataclass
class SampleConfig:
    out_dir: str = setting("out-tiny")  # the run whose ckpt_best.pt (else ckpt.pt) is measured
    data_dir: str = setting("")  # shard directory; '': the checkpoint's training data_dir
    split: str = setting("val")  # the split measured
    sizes: list[int] = setting([16384, 32768, 65536, 131072, 262144, 524288, 1048576])  # eval sizes in tokens
    batch_size: int = setting(16, ge=1)  # windows per forward pass
    device: str = setting("cpu", pattern=r"cpu|cuda(:\d+)?")  # where to score


def main(argv):
    cfg = load_config(SampleConfig, argv)
    path = find_checkpoint(cfg.out_dir)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).to(cfg.device)
    data_dir = cfg.data_dir or ckpt.get("config", {}).get("data_dir", "")
    T = model.config.block_size
    total = sum(shards.shard_lengths(shards.list_shards(data_dir, cfg.split)))
    starts = evals.eval_windows(total, T)
    loader = TokenLoader(data_dir, cfg.split, 1, T, shuffle=False)
    dtype = runtime.pick_dtype(cfg.device)
    losses = torch.cat([w.cpu() for _, w in evals.window_losses(model, loader, starts, cfg.batch_size, T, cfg.device,
                                                                 runtime.autocast(cfg.device, dtype))]).numpy()
    whole, sd = float(losses.mean()), float(losses.std(ddof=1))
    machine = runtime.machine_name(cfg.device)
    print(f"{path} on {data_dir}:{cfg.split}: {len(starts):,} windows of {T} ({len(starts) * T:,} tokens); whole-split "
          f"loss {whole:.4f}, per-window sd {sd:.3f} ({machine}, torch {torch.__version__})")
    print(f"{'tokens':>10} {'windows':>8} {'even strides':>13} {'its stderr':>11} {'|diff|':>8} {'first N':>9} {'|diff|':>8}")
    rows = []
    for size in cfg.sizes:
        n = len(evals.eval_windows(total, T, size))
        idx = [s // T for s in evals.eval_windows(total, T, size)]
        spread, first = losses[idx], losses[:n]
        se = float(spread.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        rows.append({"tokens": n * T, "windows": n, "even": float(spread.mean()), "stderr": se,
                     "even_diff": abs(float(spread.mean()) - whole), "first": float(first.mean()),
                     "first_diff": abs(float(first.mean()) - whole)})
        r = rows[-1]
        print(f"{r['tokens']:>10,} {n:>8,} {r['even']:>13.4f} {se:>11.4f} {r['even_diff']:>8.4f} {r['first']:>9.4f} "
              f"{r['first_diff']:>8.4f}")
    print(json.dumps({"checkpoint": path, "data": f"{data_dir}:{cfg.split}", "block_size": T, "whole": whole,
                      "window_sd": sd, "windows": len(starts), "rows": rows, "machine": machine,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    sys.exit(run_command(main))
