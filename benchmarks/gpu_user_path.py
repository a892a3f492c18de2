"""A user's whole path on a GPU, as the commands they type: prepare FineWeb, train (compiled, bf16), resume a
run from a step checkpoint, sample (KV cache on and off), evaluate on the GPU and on the CPU, export to
transformers and load the export on the GPU, train in fp16. Each check prints one JSON line and the last line
sums them up; the exit status is 1 if a check failed. Before issue 16 only train.py had run on a GPU, once,
with no resume; sample.py, eval.py and export.py never had.

    python -m benchmarks.gpu_user_path --parquet=devcheck/data/fineweb_sample.parquet \\
        --hellaswag_path=devcheck/data/hellaswag_val.jsonl                      # on the GPU: ~4 min on an H200
    python -m benchmarks.gpu_user_path --device=cpu --tiny=True --parquet=...   # the CPU dry run a test makes

What each check compares:
- resume: the run resumed from its own half-way checkpoint against the straight run, over the second half.
  Exact on CPU (tests/test_train.py holds that); on a GPU the figure is the largest difference, since some
  CUDA kernels (the embedding's backward, atomics in attention's) add in a run-dependent order.
- sample: greedy text with the KV cache and without it: the same tokens.
- eval: the GPU's bf16 val loss and HellaSwag against the CPU's fp32 on the same checkpoint and windows.
- export: transformers' logits on one window against the project's, both fp32 on the device.
- fp16: the same run in fp16 with a GradScaler (cards without bf16) against the default dtype's.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from gptlib import runtime
from gptlib.errors import ConfigError, run_command
from gptlib.monitor import METRICS_FILE, read_metrics
from gptlib.settings import load_config, setting
from gptlib.train_settings import TrainConfig

EVAL_TOKENS = 16384  # val tokens each eval scores: the CPU scores them too, in fp32
HELLASWAG_ITEMS = 100  # items scored on both devices (HellaSwag's first, fixed)
HELLASWAG_FLIPS = 5  # of them, choices bf16 may flip against fp32 (an early model's scores sit near ties)
RESUME_TOL = {"cpu": 0.0, "cuda": 2e-2}  # largest |loss difference| a resumed run may show
EVAL_TOL = 2e-2  # bf16 against fp32 val loss, relative
FP16_FIRST_TOL = 2e-2  # |first loss difference| against the default dtype's run: one forward, same weights and tokens
FP16_END_TOL = 5e-2  # relative difference of the last loss
TRANSFORMERS_TOL = 1e-3  # largest |logit difference|, both in fp32 (tests/test_export.py holds 1e-4 at 40 tokens)


@dataclass
class UserPathConfig:
    device: str = setting("cuda", pattern=r"auto|cpu|cuda(:\d+)?")  # where training, sampling and the GPU evals run
    parquet: str = setting("")  # a FineWeb parquet file (../shared/data/fineweb_sample.parquet), required
    hellaswag_path: str = setting("")  # HellaSwag jsonl to score on both devices; '': skip that check
    work: str = setting("")  # a new or empty folder for the data, runs and export; '': a fresh temporary one
    tiny: bool = setting(False)  # the tiny CPU config instead of GPT-2 124M (the dry run)
    batch_size: int = setting(8, ge=1)  # micro-batch (two per optimizer step)
    iters: int = setting(20, ge=2)  # optimizer steps of each run; the resumed run starts from the checkpoint at half
    compile: bool = setting(True)  # torch.compile the training runs, as users do

    def problems(self):
        return [] if self.parquet else ["--parquet is required: a FineWeb parquet file, e.g. "
                                        "--parquet=../shared/data/fineweb_sample.parquet"]


class StepFailed(Exception):
    pass


def run(name, args, log):
    """Run a command of the toolkit; its output goes to log, and on a failure its last lines to stderr.
    Returns (stdout, seconds)."""
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(args)}\n{r.stdout}{r.stderr}\n[rc={r.returncode}]\n")
    if r.returncode:
        tail = (r.stdout + r.stderr).strip().splitlines()[-25:]
        print("\n".join([f"--- {name} failed, rc {r.returncode}: python {' '.join(args)}", *tail]), file=sys.stderr)
        raise StepFailed(name)
    return r.stdout, round(time.time() - t0, 1)


def train_losses(out_dir):
    """{iteration: training loss} from a run's metrics.jsonl."""
    return {r["iter"]: r["loss"] for r in read_metrics(os.path.join(out_dir, METRICS_FILE)) if r["kind"] == "train"}


def report(checks, name, ok, **facts):
    checks.append(ok)
    print(json.dumps({"check": name, "ok": ok, **facts}), flush=True)


def train_args(cfg, data):
    """train.py's arguments for the runs: cfg.iters steps of two micro-batches, an eval half-way and at the end."""
    config = ["config/train_tiny_cpu.py"] if cfg.tiny else ["config/train_gpt2_124m_4070.py"]
    T = load_config(TrainConfig, config).block_size
    return config + [f"--data_dir={data}", f"--device={cfg.device}", f"--compile={cfg.compile}",
                     f"--batch_size={cfg.batch_size}", f"--total_batch_size={2 * cfg.batch_size * T}",
                     f"--max_iters={cfg.iters}", f"--lr_decay_iters={cfg.iters}", "--warmup_iters=2",
                     "--log_interval=1", f"--eval_interval={cfg.iters // 2}", f"--eval_tokens={EVAL_TOKENS}",
                     "--hellaswag_interval=0", "--humaneval_interval=0"]


def train_and_resume(cfg, work, data, log, checks):
    """A straight run keeping its step checkpoints, then a run resumed from the middle one."""
    common = train_args(cfg, data)
    straight, resumed = os.path.join(work, "straight"), os.path.join(work, "resumed")
    half, n = cfg.iters // 2, cfg.iters
    _, s1 = run("train", ["train.py", *common, f"--out_dir={straight}", f"--ckpt_interval={half}",
                          "--keep_last_n=2"], log)
    middle = os.path.join(straight, f"ckpt_{half:07d}.pt")
    _, s2 = run("resume", ["train.py", *common, f"--out_dir={resumed}", "--init_from=resume",
                           f"--resume_from={middle}"], log)
    a, b = train_losses(straight), train_losses(resumed)
    diffs = [abs(a[i] - b.get(i, float("inf"))) for i in a if i > half]
    tol = RESUME_TOL["cpu" if cfg.device == "cpu" else "cuda"]
    report(checks, "resume", len(a) == n and max(diffs) <= tol, first_loss=a[1], last_loss=a[n],
           max_abs_diff=max(diffs), bit_exact=max(diffs) == 0.0, tolerance=tol, straight_s=s1, resumed_s=s2)
    return straight


def fp16(cfg, run_dir, data, work, log, checks):
    """The same run in fp16 with a GradScaler (GPUs without bf16: T4, V100, RTX 20xx), against the first: the
    same start and about the same end (the scaler may skip a first step or two whose gradients overflow)."""
    out = os.path.join(work, "fp16")
    _, secs = run("train in fp16", ["train.py", *train_args(cfg, data), "--dtype=float16", f"--out_dir={out}"], log)
    a, b, n = train_losses(run_dir), train_losses(out), cfg.iters
    end_rel = abs(b[n] - a[n]) / a[n]
    report(checks, "fp16", len(b) == n and abs(b[1] - a[1]) <= FP16_FIRST_TOL and end_rel <= FP16_END_TOL,
           first_loss=b[1], first_loss_default=a[1], last_loss=b[n], last_loss_default=a[n],
           end_rel_diff=end_rel, seconds=secs)


def sample(cfg, run_dir, data, work, log, checks):
    """Greedy text from the trained run with the KV cache and without: the same tokens."""
    args = ["sample.py", f"--out_dir={run_dir}", f"--device={cfg.device}", "--num_samples=1", "--max_new_tokens=48",
            "--temperature=0", "--start=The", "--stop_at_eot=False"]
    cached, s1 = run("sample", args + ["--use_cache=True"], log)
    plain, s2 = run("sample", args + ["--use_cache=False"], log)
    same = cached == plain and len(cached) > 0
    texts = dict(text=cached.strip()[:300]) if same else \
        dict(cached_text=cached.strip()[:300], plain_text=plain.strip()[:300])
    report(checks, "sample", same, **texts, cached_s=s1, plain_s=s2)


def evaluate(cfg, run_dir, data, work, log, checks):
    """eval.py on the device and on the CPU: one checkpoint, the same windows and HellaSwag items."""
    out = {}
    for device in dict.fromkeys([cfg.device, "cpu"]):
        path = os.path.join(work, f"eval_{device.replace(':', '')}.json")
        args = ["eval.py", f"--out_dir={run_dir}", f"--device={device}", f"--max_tokens={EVAL_TOKENS}",
                f"--batch_size={cfg.batch_size}", f"--json_out={path}"]
        if cfg.hellaswag_path:
            args += ["--hellaswag", f"--hellaswag_path={cfg.hellaswag_path}", f"--hellaswag_limit={HELLASWAG_ITEMS}"]
        _, secs = run(f"eval on {device}", args, log)
        with open(path) as f:
            out[device] = (json.load(f)["results"], secs)
    (dev, dev_s), (cpu, cpu_s) = out[cfg.device], out["cpu"]
    rel = abs(dev["val"]["loss"] - cpu["val"]["loss"]) / cpu["val"]["loss"]
    facts = dict(val_loss=dev["val"]["loss"], cpu_val_loss=cpu["val"]["loss"], rel_diff=rel, device_s=dev_s,
                 cpu_s=cpu_s)
    ok = rel <= EVAL_TOL
    if cfg.hellaswag_path:
        flips = abs(dev["hellaswag"]["acc_norm"] - cpu["hellaswag"]["acc_norm"]) * HELLASWAG_ITEMS
        facts.update(acc_norm=dev["hellaswag"]["acc_norm"], cpu_acc_norm=cpu["hellaswag"]["acc_norm"])
        ok = ok and flips <= HELLASWAG_FLIPS
    report(checks, "eval", ok, tolerance=EVAL_TOL, **facts)


def export(cfg, run_dir, data, work, log, checks):
    """export.py, then transformers' logits on the first val window against the project's, on the device."""
    import torch
    from transformers import AutoModelForCausalLM
    from gptlib import checkpoint, shards
    to = os.path.join(work, "hf")
    _, secs = run("export", ["export.py", f"--out_dir={run_dir}", f"--to={to}", "--overwrite=True"], log)
    model, _, _ = checkpoint.load_model("resume", run_dir)
    T = model.config.block_size
    first = shards.read_shard(shards.list_shards(data, "val")[0])[:T]  # the val split's first window
    x = torch.as_tensor(first.astype("int64"))[None].to(cfg.device)  # (1, T)
    hf = AutoModelForCausalLM.from_pretrained(to).to(cfg.device).eval()
    with torch.no_grad():  # the export keeps the 50,257 real rows of a padded vocabulary
        ours = model.to(cfg.device).eval()(x)[0][0, :, :shards.VOCAB_SIZE]  # (T, 50257)
        theirs = hf(input_ids=x).logits[0]  # (T, 50257)
    diff = (ours - theirs).abs().max().item()
    same_top = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    report(checks, "export", diff <= TRANSFORMERS_TOL and same_top == 1.0, max_abs_logit_diff=diff,
           same_top_token=same_top, tolerance=TRANSFORMERS_TOL, export_s=secs)


def main(argv):
    cfg = load_config(UserPathConfig, argv)
    cfg.device = runtime.pick_device(cfg.device)  # a missing GPU is one line here, not a failure in every command
    if cfg.work and os.path.isdir(cfg.work) and os.listdir(cfg.work):
        raise ConfigError(f"--work={cfg.work} is not empty (the runs start from scratch); name a new folder or "
                          f"omit --work")
    work = cfg.work or tempfile.mkdtemp(prefix="gpu_user_path_")
    os.makedirs(work, exist_ok=True)
    log, data, checks = os.path.join(work, "commands.log"), os.path.join(work, "data"), []
    print(f"commands and their output: {log}", flush=True)
    try:
        _, secs = run("prepare", ["prepare_fineweb.py", f"--data_files={cfg.parquet}", f"--out_dir={data}",
                                  "--val_tokens=100000", "--overwrite=True"], log)
        print(json.dumps({"step": "prepare", "s": secs}), flush=True)
        run_dir = train_and_resume(cfg, work, data, log, checks)
        for check in (sample, evaluate, export, fp16):  # each on the trained run; a failed one does not stop the rest
            try:
                check(cfg, run_dir, data, work, log, checks)
            except StepFailed as e:
                report(checks, str(e), False, error="the command failed (its output is above)")
    except StepFailed as e:
        report(checks, str(e), False, error="the command failed (its output is above); later checks need it")
    print(json.dumps({"user_path": "passed" if all(checks) else "FAILED", "checks": len(checks),
                      "failed": checks.count(False)}), flush=True)
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
