"""The classic, the modern and the speedrun recipe side by side, on the same real tokens.

    python -m benchmarks.bench_recipes --data_files=../shared/data/fineweb_sample.parquet     # the CPU benchmark
    python -m benchmarks.bench_recipes --data_dir=data/stdlib --ladder --jobs=2 ...            # + the speedrun ladder

Trains a small GPT (4 layers x 256 wide, context 256 by default) with the classic recipe (GPT-2 model,
AdamW, cosine) at a few learning rates and with the modern one (config/recipe_modern.py) at a few scales
of its learning rates, every run on the same tokens in the same order, then prints val loss against tokens
seen for the best run of each, and the fraction of the classic recipe's tokens that the modern one needs to
reach the classic's final val loss. Variants (e.g. --variants=windows,softcap) rerun the best modern
setting with one more change. --ladder adds the speedrun recipe's features to the best modern run one at a
time, in the records' order (LADDER: each rung keeps the ones before it; the last rung is
config/recipe_speedrun.py at this scale), and reports the fraction of the modern run's tokens that each rung
needs to reach the modern run's final val loss (issue 26's yardstick). Every run uses the same rows
(block_size tokens each, batch_size of them per step) and is evaluated on the same val windows.

Each run is a real train.py run (a subprocess) into work_dir/<name>/, so what is measured is what users get;
a finished run is not run again, so an interrupted benchmark resumes where it stopped. Results also go to
work_dir/results.json and work_dir/recipes.png.
"""
import concurrent.futures
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
    # lean optimizer states (issue 27): the same run with AdamW's moments in 8 or 4 bits, Muon's momentum in bf16
    "adamw_8bit": ["--adamw_states=8bit"],
    "adamw_4bit": ["--adamw_states=4bit"],
    "muon_bf16": ["--muon_states=bf16"],
    "lean": ["--adamw_states=8bit", "--muon_states=bf16"],
}
SPEEDRUN = os.path.join(REPO, "config", "recipe_speedrun.py")


def ladder(cfg):
    """(rung name, the settings it adds) in the records' order; each rung keeps the ones before it."""
    return [
        ("docs", ["--doc_mask=True"]),  # record #12: attention inside documents (here: in rows of block_size)
        ("window", [f"--attn_window={cfg.window}", f"--window_pattern={cfg.window_pattern}"]),  # #12, long-short
        ("window_warmup", [f"--window_start={cfg.window_start}"]),  # record #13
        ("value_residual", ["--value_residual=True"]),  # record #9
        ("x0_skip", ["--x0_skip=True"]),  # record #9 (its Muon momentum warmup is a default of both recipes)
        ("unet", ["--unet_skips=True"]),  # record #11
        ("value_embeds", ["--value_residual=False", f"--value_embeds={cfg.value_embeds}"]),  # #14: replaces #9's
        ("softcap15", ["--logit_softcap=15"]),  # record #18: config/recipe_speedrun.py of issue 26
        # issue 36: the records' speed choices, each at this scale (loss unchanged within noise is the aim)
        ("tables_bf16", ["--table_dtype=bf16"]),  # record #18's bf16 embeddings
        ("block_windows", [f"--attn_block={cfg.window // 8}"]),  # #16: windows in whole blocks (1792 / 128 = 14)
        ("heads128", [f"--n_head={max(1, cfg.n_embd // 128)}"]),  # heads of 128 (the records' 6 x 128 at 768)
        # issue 35: the records after #18 (each rung keeps the ones above)
        ("batch_schedule", ["--batch_size=1", f"--batch_schedule={cfg.block_size * cfg.batch_size // 2},"
                            f"{cfg.block_size * cfg.batch_size},{3 * cfg.block_size * cfg.batch_size // 2}"]),  # #46: 1:2:3, the same tokens
        ("seq_schedule", [f"--seq_schedule={cfg.block_size // 2},{cfg.block_size},{cfg.block_size}"]),  # #89: short rows first
        ("mtp", ["--mtp=0.5,0.25"]),  # record #53: [1, 0.5, 0.25 -> 0] -> [1, 0.5 -> 0] -> [1]
        ("untie", ["--untie_at=0.667"]),  # record #53: the head shares the embedding for 2/3 of the run
        ("bigram", [f"--bigram_embeds={cfg.bigram_embeds}"]),  # record #62
        ("bigram_signs", ["--bigram_signs=8192"]),  # record #83: the sign trick
        ("key_offset", ["--key_offset=True"]),  # 2025-12-14: long windows' keys see the token before (induction)
    ]


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
    ladder: bool = setting(False)  # also add the speedrun recipe's features to the best modern run, one at a time
    window: int = setting(256, ge=2)  # ladder: the final long attention window (config/recipe_speedrun.py: 1792)
    window_start: int = setting(32, ge=1)  # ladder: the window at step 0, growing to window (recipe: 128)
    window_pattern: str = setting("LS", pattern="[LS]+")  # ladder: long/short blocks (recipe: LSSSLS for 12 blocks)
    value_embeds: int = setting(2, ge=1)  # ladder: value-embedding tables (recipe: 3 for 12 blocks; at most n_layer/2)
    bigram_embeds: int = setting(5 * 50304, ge=2)  # ladder: rows of the bigram hash table (record #62: 5 x vocab)
    rungs: list[str] = setting([])  # ladder: only these rungs ('softcap15' alone: the whole speedrun recipe); []: all
    jobs: int = setting(1, ge=1)  # runs trained at once, each with cpu_cores/jobs torch threads
    seed: int = setting(1337, ge=0)  # the same for every run: same init draw, same data order
    data_order: str = setting("windows", choices=["stream", "windows"])  # the data order of every run (both recipes)
    device: str = setting("cpu", pattern=r"auto|cpu|mps|cuda(:\d+)?")  # where the runs train
    compile: bool = setting(False)  # torch.compile the runs (on GPU)
    dtype: str = setting("auto")  # passed to train.py

    def problems(self):
        if not self.data_files and not self.data_dir:
            return ["give --data_files=PARQUET (prepared into work_dir/data) or --data_dir=DATASET"]
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            return [f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}"]
        names = [name for name, _ in ladder(self)]
        unknown = [r for r in self.rungs if r not in names]
        return [f"unknown rung {unknown[0]!r}; choose from {', '.join(names)}"] if unknown else []


def prepare_data(cfg):
    if cfg.data_dir:
        return cfg.data_dir
    out = os.path.join(cfg.work_dir, "data")
    if not os.path.exists(os.path.join(out, shards.MANIFEST)):
        subprocess.run([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), f"--data_files={cfg.data_files}",
                        f"--out_dir={out}", "--val_tokens=200000"], check=True)
    return out


def steps_of(cfg):
    return max(1, cfg.tokens // (cfg.batch_size * cfg.block_size))


def run(cfg, data_dir, name, extra):
    """One train.py run (skipped when it already finished); returns its eval records."""
    out = os.path.join(cfg.work_dir, name)
    steps = steps_of(cfg)
    done = os.path.exists(os.path.join(out, "ckpt.pt")) and any(
        r.get("kind") == "eval" and r["iter"] == steps for r in read_metrics(os.path.join(out, METRICS_FILE)))
    if not done:
        args = [f"--data_dir={data_dir}", f"--out_dir={out}", f"--n_layer={cfg.n_layer}", f"--n_head={cfg.n_head}",
                f"--n_embd={cfg.n_embd}", f"--block_size={cfg.block_size}", f"--batch_size={cfg.batch_size}",
                f"--total_batch_size={cfg.batch_size * cfg.block_size}", f"--max_iters={steps}",
                f"--warmup_iters={round(cfg.warmup_frac * steps)}", f"--eval_interval={cfg.eval_interval}",
                f"--eval_tokens={cfg.eval_tokens}", "--log_interval=10", f"--ckpt_interval={steps}",
                f"--seed={cfg.seed}", f"--device={cfg.device}", f"--compile={cfg.compile}", f"--dtype={cfg.dtype}",
                f"--data_order={cfg.data_order}", "--overwrite=True",
                f"--cpu_threads={max(1, (os.cpu_count() or 1) // cfg.jobs) if cfg.device == 'cpu' else 0}", *extra]
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


def run_all(cfg, data_dir, specs):
    """{name: run(...)} for specs {name: extra settings}, cfg.jobs at a time."""
    with concurrent.futures.ThreadPoolExecutor(cfg.jobs) as pool:
        futures = {name: pool.submit(run, cfg, data_dir, name, extra) for name, extra in specs.items()}
        return {name: f.result() for name, f in futures.items()}


def report_ladder(runs, best_modern, names):
    """Each rung's final val loss, and the fraction of the modern run's tokens it needs to reach the modern
    run's final val loss; returns {rung: fraction}."""
    target, total = runs[best_modern][0][-1][1], runs[best_modern][0][-1][0]
    print(f"\nthe speedrun ladder (each rung adds its feature to the ones above), against {best_modern}'s final "
          f"val loss {target:.4f} after {total:,} tokens:")
    fractions = {}
    for name in names:
        need = tokens_to_reach(runs[name][0], target)
        fractions[name] = need / total if need is not None else math.nan
        print(f"  {name:<44} final {runs[name][0][-1][1]:.4f}   reaches it after "
              + (f"{need:>10,.0f} tokens: {fractions[name]:6.1%}" if need is not None else "never in this run"))
    return fractions


def main(argv):
    cfg = load_config(RecipesConfig, argv)
    data_dir = prepare_data(cfg)
    modern = load_config(TrainConfig, [MODERN])
    scaled = lambda s: [MODERN, f"--learning_rate={modern.learning_rate * s}", f"--muon_lr={modern.muon_lr * s}"]
    specs = {f"classic-lr{lr:g}": [f"--learning_rate={lr}", f"--min_lr={lr / 10}"] for lr in cfg.classic_lrs}
    specs |= {f"modern-x{s:g}": scaled(s) for s in cfg.modern_scales}
    runs = run_all(cfg, data_dir, specs)
    final = {name: curve[-1][1] for name, (curve, _) in runs.items()}
    best_classic = min((n for n in runs if n.startswith("classic")), key=final.get)
    best_modern = min((n for n in runs if n.startswith("modern")), key=final.get)
    best = scaled(float(best_modern.split("-x")[1]))
    specs = {f"{best_modern}+{v}": best + VARIANTS[v] for v in cfg.variants}
    rungs, added = [], []
    for rung, settings in ladder(cfg) if cfg.ladder else ():
        added += settings
        if not cfg.rungs or rung in cfg.rungs:
            rungs.append(f"{best_modern}+{rung}")
            specs[rungs[-1]] = best + added
    runs |= run_all(cfg, data_dir, specs)
    final |= {name: runs[name][0][-1][1] for name in specs}
    target = final[best_classic]
    need = tokens_to_reach(runs[best_modern][0], target)
    total = runs[best_classic][0][-1][0]

    print(f"\nmachine: {runtime.cpu_name()}, {os.cpu_count()} cores; device {cfg.device}; "
          f"model {cfg.n_layer}x{cfg.n_embd}, rows of {cfg.block_size} x {cfg.batch_size}; {cfg.tokens:,} tokens per run")
    print("final val loss of every run (lower is better):")
    for name, v in final.items():
        tps = runs[name][1]
        print(f"  {name:<44} {v:.4f}   {sum(tps[1:]) / max(1, len(tps) - 1):,.0f} tok/s")
    shown = [best_classic, best_modern] + rungs[-1:]
    print(f"\nval loss vs tokens seen ({' | '.join(shown)}):")
    for points in zip(*(runs[n][0] for n in shown)):
        print(f"  {points[0][0]:>10,}  " + "  ".join(f"{v:.4f}" for _, v in points))
    frac = need / total if need is not None else math.nan
    print(f"\nthe modern recipe reaches the classic recipe's final val loss {target:.4f} after "
          + (f"{need:,.0f} of {total:,} tokens: {frac:.1%} of the tokens" if need else "never in this run"))
    ladder_fractions = report_ladder(runs, best_modern, rungs) if rungs else {}
    with open(os.path.join(cfg.work_dir, "results.json"), "w") as f:
        json.dump({"config": vars(cfg), "final": final, "best_classic": best_classic, "best_modern": best_modern,
                   "tokens_fraction": frac, "ladder_fractions": ladder_fractions,
                   "curves": {n: c for n, (c, _) in runs.items()}}, f, indent=1)
    import plot
    plot.plot_runs([os.path.join(cfg.work_dir, n) for n in shown], os.path.join(cfg.work_dir, "recipes.png"))


if __name__ == "__main__":
    sys.exit(run_command(main))
