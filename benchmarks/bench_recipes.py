"""The classic and the modern recipe side by side, on the same real tokens.

    python -m benchmarks.bench_recipes --data_files=../shared/data/fineweb_sample.parquet     # the CPU benchmark

Trains a small GPT (4 layers x 256 wide, context 256 by default) with the classic recipe (GPT-2 model,
AdamW, cosine) at a few learning rates and with the modern one (config/recipe_modern.py) at a few scales
of its learning rates, every run on the same tokens in the same order, then prints val loss against tokens
seen for the best run of each, and the fraction of the classic recipe's tokens that the modern one needs to
reach the classic's final val loss. Variants (e.g. --variants=windows,softcap) rerun the best modern
setting with one more change.

Each run is a real train.py run (a subprocess) into work_dir/<name>/, so what is measured is what users get;
a finished run is not run again, so an interrupted benchmark resumes where it stopped. Results also go to
work_dir/results.json and work_dir/recipes.png.
"""
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from gptlib import runtime, shards
from gptlib.errors import run_command
from gptlib.monitor import METRICS_FILE, read_metrics
from gptlib.settings import load_config, setting
from gptlib.train_settings import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODERN = os.path.join(REPO, "config", "recipe_modern.py")
VARIANTS = {  # name -> settings layered on the best modern run
    "windows": ["--data_order=windows"],  # block_size windows shuffled within each shard
    "softcap": ["--logit_softcap=15"],  # logits squashed into (-15, 15) (Gemma 2; modded-nanogpt)
    "stream": ["--data_order=stream"],
    "adam_lr_x3": ["--learning_rate=9e-3"],  # 3x the AdamW rate of embeddings, head and gains (Muon's unchanged)
}


@dataclass
class RecipesConfig:
    data_files: str = setting("")  # FineWeb-style parquet (a 'text' column) to prepare into work_dir/data; or data_dir
    data_dir: str = setting("")  # an already prepared dataset to use instead
    work_dir: str = setting("out-bench-recipes", path="dir")  # runs, results.json and recipes.png go here
    n_layer: int = setting(4, ge=1)  # model size of every run
    n_head: int = setting(4, ge=1)  # attention heads
    n_embd: int = setting(256, ge=1)  # width
    block_size: int = setting(256, ge=1)  # context
    batch_size: int = setting(16, ge=1)  # micro-batch; one micro-step per step
    tokens: int = setting(1_500_000, ge=1)  # tokens each run trains on
    warmup_frac: float = setting(0.05, ge=0, lt=1)  # warmup, as a fraction of the run, for both recipes
    eval_interval: int = setting(25, ge=1)  # steps between evals (the points of the curves)
    eval_tokens: int = setting(20480, ge=0)  # val tokens per eval, spread over the split (the same windows every time)
    classic_lrs: list[float] = setting([1e-3, 2e-3, 4e-3])  # AdamW peak learning rates tried for the classic recipe
    modern_scales: list[float] = setting([0.5, 1.0, 2.0])  # multiples of the modern recipe's learning_rate and muon_lr tried
    variants: list[str] = setting([])  # extra runs on the best modern setting: windows, softcap
    seed: int = setting(1337, ge=0)  # the same for every run: same init draw, same data order
    data_order: str = setting("windows", choices=["stream", "windows"])  # the data order of every run (both recipes)
    device: str = setting("cpu", pattern=r"auto|cpu|mps|cuda(:\d+)?")  # where the runs train
    compile: bool = setting(False)  # torch.compile the runs (on GPU)
    dtype: str = setting("auto")  # passed to train.py

    def problems(self):
        if not self.data_files and not self.data_dir:
            return ["give --data_files=PARQUET (prepared into work_dir/data) or --data_dir=DATASET"]
        unknown = [v for v in self.variants if v not in VARIANTS]
        return [f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}"] if unknown else []


def prepare_data(cfg):
    if cfg.data_dir:
        return cfg.data_dir
    out = os.path.join(cfg.work_dir, "data")
    if not os.path.exists(os.path.join(out, shards.MANIFEST)):
        subprocess.run([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), f"--data_files={cfg.data_files}",
                        f"--out_dir={out}", "--val_tokens=200000"], check=True)
    return out


def run(cfg, data_dir, name, extra):
    """One train.py run (skipped when it already finished); returns its eval records."""
    out = os.path.join(cfg.work_dir, name)
    steps = max(1, cfg.tokens // (cfg.batch_size * cfg.block_size))
    done = os.path.exists(os.path.join(out, "ckpt.pt")) and any(
        r.get("kind") == "eval" and r["iter"] == steps for r in read_metrics(os.path.join(out, METRICS_FILE)))
    if not done:
        args = [f"--data_dir={data_dir}", f"--out_dir={out}", f"--n_layer={cfg.n_layer}", f"--n_head={cfg.n_head}",
                f"--n_embd={cfg.n_embd}", f"--block_size={cfg.block_size}", f"--batch_size={cfg.batch_size}",
                f"--total_batch_size={cfg.batch_size * cfg.block_size}", f"--max_iters={steps}",
                f"--warmup_iters={round(cfg.warmup_frac * steps)}", f"--eval_interval={cfg.eval_interval}",
                f"--eval_tokens={cfg.eval_tokens}", "--log_interval=10", f"--ckpt_interval={steps}",
                f"--seed={cfg.seed}", f"--device={cfg.device}", f"--compile={cfg.compile}", f"--dtype={cfg.dtype}",
                f"--data_order={cfg.data_order}", "--overwrite=True", *extra]
        t0 = time.time()
        print(f"--- {name}: {steps} steps", flush=True)
        subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], check=True, stdout=subprocess.DEVNULL)
        print(f"--- {name}: {time.time() - t0:.0f} s", flush=True)
    records = read_metrics(os.path.join(out, METRICS_FILE))
    return [(r["tokens"], r["val/val"]) for r in records if r.get("kind") == "eval"], \
        [r["tok_per_sec"] for r in records if r.get("kind") == "train"]


def tokens_to_reach(curve, target):
    """Tokens at which a val curve first reaches `target`, interpolated between evals (None: never)."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return t1 if v0 == v1 else t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def main(argv):
    cfg = load_config(RecipesConfig, argv)
    data_dir = prepare_data(cfg)
    runs = {}
    for lr in cfg.classic_lrs:
        runs[f"classic-lr{lr:g}"] = run(cfg, data_dir, f"classic-lr{lr:g}", [f"--learning_rate={lr}", f"--min_lr={lr / 10}"])
    modern = load_config(TrainConfig, [MODERN])
    for s in cfg.modern_scales:
        runs[f"modern-x{s:g}"] = run(cfg, data_dir, f"modern-x{s:g}", [MODERN, f"--learning_rate={modern.learning_rate * s}",
                                                                       f"--muon_lr={modern.muon_lr * s}"])
    final = {name: curve[-1][1] for name, (curve, _) in runs.items()}
    best_classic = min((n for n in runs if n.startswith("classic")), key=final.get)
    best_modern = min((n for n in runs if n.startswith("modern")), key=final.get)
    s = float(best_modern.split("-x")[1])
    for v in cfg.variants:
        name = f"{best_modern}+{v}"
        runs[name] = run(cfg, data_dir, name, [MODERN, f"--learning_rate={modern.learning_rate * s}",
                                              f"--muon_lr={modern.muon_lr * s}", *VARIANTS[v]])
        final[name] = runs[name][0][-1][1]
    target = final[best_classic]
    need = tokens_to_reach(runs[best_modern][0], target)
    total = runs[best_classic][0][-1][0]

    print(f"\nmachine: {runtime.cpu_name()}, {os.cpu_count()} cores; device {cfg.device}; "
          f"model {cfg.n_layer}x{cfg.n_embd}, context {cfg.block_size}; {cfg.tokens:,} tokens per run")
    print("final val loss of every run (lower is better):")
    for name, v in final.items():
        tps = runs[name][1]
        print(f"  {name:<28} {v:.4f}   {sum(tps[1:]) / max(1, len(tps) - 1):,.0f} tok/s")
    print(f"\nval loss vs tokens seen ({best_classic} | {best_modern}):")
    for (t, a), (_, b) in zip(runs[best_classic][0], runs[best_modern][0]):
        print(f"  {t:>10,}  {a:.4f}  {b:.4f}")
    frac = need / total if need is not None else math.nan
    print(f"\nthe modern recipe reaches the classic recipe's final val loss {target:.4f} after "
          + (f"{need:,.0f} of {total:,} tokens: {frac:.1%} of the tokens" if need else "never in this run"))
    with open(os.path.join(cfg.work_dir, "results.json"), "w") as f:
        json.dump({"config": vars(cfg), "final": final, "best_classic": best_classic, "best_modern": best_modern,
                   "tokens_fraction": frac, "curves": {n: c for n, (c, _) in runs.items()}}, f, indent=1)
    import plot
    plot.plot_runs([os.path.join(cfg.work_dir, n) for n in (best_classic, best_modern)],
                   os.path.join(cfg.work_dir, "recipes.png"))


if __name__ == "__main__":
    sys.exit(run_command(main))
