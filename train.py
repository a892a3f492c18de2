"""Train a GPT-2 model on token shards. Reads top to bottom as the run happens.

    python train.py config/train_gpt2_124m_4070.py --batch_size=8
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2_124m_3090.py
    python train.py config/train_gpt2_124m_4070.py --init_from=resume --max_iters=30000   # extend a run

Settings and their defaults: config.py (TrainConfig), or `python train.py --help`.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import evals
import monitor
import pretrained
import runtime
import shards
from config import ConfigError, TrainConfig, format_config, load_config
from model import GPT, GPTConfig
from runtime import CheckpointError

MODEL_KEYS = [f.name for f in dataclasses.fields(GPTConfig)]  # settings that define the model's shape
SHAPE_KEYS = ["n_layer", "n_head", "n_embd", "vocab_size", "bias", "tie_weights"]  # must match a resumed checkpoint


def get_lr(it, cfg):
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters (GPT-3 paper, appendix B).
    Computed from the current settings, so a resumed run with a larger max_iters stretches the schedule."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def fmt_duration(seconds):
    seconds = int(max(0, seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else (f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s")


class Diverged(Exception):
    """Too many skipped (NaN/inf or spiking) updates in a row."""


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint and exits.
    Under torchrun the agent forwards the signal to every worker and SIGKILLs them after its
    --shutdown_timeout (30 s by default), so the step plus the checkpoint must fit in that."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now, the last checkpoint is intact
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


def main(argv):
    cfg = load_config(TrainConfig, argv)

    # ------------------------------------------------------------------ devices and processes
    ddp = "RANK" in os.environ  # launched by torchrun
    if ddp:
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        device = f"cuda:{local_rank}" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "cpu"
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group(backend=cfg.backend or ("nccl" if device.startswith("cuda") else "gloo"))
    else:
        rank, local_rank, world = 0, 0, 1
        device = runtime.pick_device(cfg.device)
    master = rank == 0
    device_type = device.split(":")[0]
    dtype = runtime.pick_dtype(device, cfg.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed, fine for training
    torch.backends.cudnn.allow_tf32 = True
    ctx = runtime.autocast(device, dtype)
    cuda = device_type == "cuda"

    grad_accum = monitor.grad_accum_steps(cfg.total_batch_size, cfg.batch_size, cfg.block_size, world)  # asserts it divides
    eval_batch_size = cfg.eval_batch_size or cfg.batch_size
    if eval_batch_size > cfg.batch_size:
        raise ConfigError(f"eval_batch_size={eval_batch_size} is larger than batch_size={cfg.batch_size}; eval must fit "
                          f"where training fits, so lower eval_batch_size")

    # ------------------------------------------------------------------ output dir and logging
    ckpt_path = os.path.join(cfg.out_dir, runtime.CKPT_NAME)
    best_path = os.path.join(cfg.out_dir, runtime.BEST_NAME)
    if cfg.init_from != "resume" and os.path.exists(ckpt_path) and not (cfg.overwrite or cfg.plan):
        raise ConfigError(f"{cfg.out_dir} already holds a run ({ckpt_path}); continue it with --init_from=resume, "
                          f"pick another out_dir, or pass --overwrite=True to replace it")
    log_file = None
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_file = open(os.path.join(cfg.out_dir, "log.txt"), "a")

    def log(msg):
        if master:
            print(msg, flush=True)
            log_file.write(msg + "\n")
            log_file.flush()

    log(f"config:\n{format_config(cfg)}")
    log(f"device {device} ({torch.cuda.get_device_name(device) if device_type == 'cuda' else device_type}), dtype {dtype}, "
        f"world size {world}, gradient accumulation {grad_accum} x {cfg.batch_size} x {cfg.block_size} "
        f"= {cfg.total_batch_size:,} tokens/step")

    # ------------------------------------------------------------------ data
    train_loader = shards.TokenLoader(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, rank, world, seed=cfg.seed)
    manifest = shards.read_manifest(cfg.data_dir)
    manifest_train_tokens = sum(n for name, n in manifest["shards"].items() if name.startswith("train_"))
    if manifest_train_tokens != train_loader.total_tokens:
        log(f"warning: manifest.json lists {manifest_train_tokens:,} train tokens but the shards hold "
            f"{train_loader.total_tokens:,}; is a prepare run still writing to {cfg.data_dir}?")
    val_sets = evals.parse_val_sets(cfg.val_sets, cfg.data_dir)
    primary_val = evals.check_primary_val(cfg.primary_val, val_sets)
    hellaswag_items = evals.load_hellaswag(cfg.hellaswag_path or None) if cfg.hellaswag_interval else None  # fail now, not hours in
    if cfg.humaneval_interval:
        evals.load_humaneval(cfg.humaneval_path)

    # ------------------------------------------------------------------ model
    torch.manual_seed(cfg.seed)
    ckpt = None
    model_args = {k: getattr(cfg, k) for k in MODEL_KEYS}
    if cfg.init_from == "resume":
        ckpt = runtime.load_checkpoint(ckpt_path, map_location="cpu")
        saved, saved_cfg = ckpt["model_args"], ckpt["config"]
        for k in SHAPE_KEYS:  # a change from the run's own settings is refused (a GPT-2 fine-tune keeps vocab 50257)
            if model_args[k] not in (saved[k], saved_cfg.get(k)):
                raise CheckpointError(f"{ckpt_path} has {k}={saved[k]!r} but the config says {model_args[k]!r}; "
                                      f"resume with the checkpoint's model shape or start a new out_dir")
        model_args.update({k: saved[k] for k in SHAPE_KEYS})
        if cfg.block_size > saved["block_size"]:
            raise CheckpointError(f"block_size={cfg.block_size} is larger than the checkpoint's {saved['block_size']}; "
                                  f"the position embeddings cannot grow: use block_size <= {saved['block_size']}")
        model = GPT(GPTConfig(**{**model_args, "block_size": saved["block_size"]}))
        model.load_state_dict(ckpt["model"])
        if cfg.block_size < saved["block_size"]:
            model.crop_block_size(cfg.block_size)
    elif cfg.init_from.startswith("gpt2"):
        model = pretrained.load_pretrained(cfg.init_from, dropout=cfg.dropout)
        if cfg.block_size < model.config.block_size:
            model.crop_block_size(cfg.block_size)
        model_args = dataclasses.asdict(model.config)
    elif cfg.init_from == "scratch":
        model = GPT(GPTConfig(**model_args))
    else:
        raise ConfigError(f"init_from={cfg.init_from!r}: use 'scratch', 'resume', 'gpt2', 'gpt2-medium', 'gpt2-large' or 'gpt2-xl'")
    model.to(device)
    n_params, n_params_body = model.get_num_params(), model.get_num_params(non_embedding=True)

    # ------------------------------------------------------------------ optimizer and state
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # fp16 needs loss scaling, bf16 does not
    optimizer = runtime.make_optimizer(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device)
    iter_num, best_val, bad_evals, last_eval_iter, loss_ema = 0, float("inf"), 0, -1, None
    train_loss_sum, train_loss_n = 0.0, 0  # train loss since the last eval, for the eval line
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        train_loader.load_state_dict(ckpt["loader"])
        runtime.set_rng_state(ckpt["rng"])
        iter_num, best_val = ckpt["iter_num"], ckpt["best_val_loss"]
        bad_evals, last_eval_iter, loss_ema = ckpt["bad_evals"], ckpt["last_eval_iter"], ckpt["loss_ema"]
        train_loss_sum, train_loss_n = ckpt["train_loss_sum"], ckpt["train_loss_n"]
        log(f"resumed from {ckpt_path} at iter {iter_num} (epoch {train_loader.epoch}, best {primary_val} loss {best_val:.4f})")
    start_iter = iter_num
    del ckpt  # free the host copy of the weights and optimizer state

    raw_model = model
    if cfg.compile:
        ok, why = runtime.compile_available(device)
        if ok:
            log("compiling the model (the first iterations are slow)")
            model = torch.compile(model)
        else:
            log(f"compile switched off: {why}")
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    # ------------------------------------------------------------------ plan
    flops_per_token = monitor.model_flops_per_token(raw_model, cfg.block_size)
    peak_flops, peak_note = monitor.peak_flops(device_type, dtype, override_tflops=cfg.peak_tflops)
    plan = monitor.plan_run(n_params=n_params, n_params_non_embedding=n_params_body, tokens_per_step=cfg.total_batch_size,
                            max_iters=cfg.max_iters, iter_num=iter_num,
                            train_tokens=manifest_train_tokens or train_loader.total_tokens,
                            tokens_per_sec=cfg.tokens_per_sec or None)
    for line in monitor.format_plan(plan):
        log(line)
    log(f"checkpoints: {runtime.checkpoint_bytes(n_params) / 1e9:.2f} GB each (ckpt.pt, ckpt_best.pt"
        + (f", {cfg.keep_last_n} numbered" if cfg.keep_last_n else "") + ")")
    if peak_note:
        log(peak_note)
    if cfg.plan:
        return 0
    if master:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
    metrics = monitor.MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), resume_iter=start_iter if start_iter else None) if master else None
    tracker = monitor.make_tracker(cfg.wandb_log, cfg.tensorboard_log, cfg.wandb_project,
                                   cfg.wandb_run_name or os.path.basename(os.path.abspath(cfg.out_dir)),
                                   dataclasses.asdict(cfg), os.path.join(cfg.out_dir, "tb")) if master else None

    def save(path, it):
        """Checkpoint on rank 0; a NaN model is never saved. True if the file was written."""
        if not master:
            return False
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            log(f"not saving {path}: the model holds NaN/inf values")
            return False
        runtime.save_checkpoint(path, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "model_args": dataclasses.asdict(raw_model.config), "config": dataclasses.asdict(cfg),
            "iter_num": it, "best_val_loss": best_val, "bad_evals": bad_evals, "last_eval_iter": last_eval_iter,
            "loss_ema": loss_ema, "train_loss_sum": train_loss_sum, "train_loss_n": train_loss_n,
            "loader": train_loader.state_dict(), "rng": runtime.rng_state(), "world_size": world})
        return True

    # ------------------------------------------------------------------ training loop
    stop = StopRequest()
    stopping = None  # the signal this process acts on; under DDP only the all-reduced flag sets it, so all ranks agree
    stop_reason, bad_steps, dt_ema, t0 = None, 0, None, time.time()
    log_losses = []  # step losses since the last log line: with log_interval > 1 the line shows their mean
    while True:
        last = iter_num >= cfg.max_iters

        # evaluate (skipped at the first iteration of a resume when the checkpoint was written after this eval)
        if (iter_num % cfg.eval_interval == 0 or last) and iter_num != last_eval_iter:
            losses = evals.eval_val_sets(raw_model, val_sets, eval_batch_size, cfg.block_size, cfg.eval_iters,
                                         device, ctx, rank, world)
            last_eval_iter = iter_num
            improved = losses[primary_val] < best_val
            if improved:
                best_val, bad_evals = losses[primary_val], 0
            else:
                bad_evals += 1
            train_loss = train_loss_sum / train_loss_n if train_loss_n else None  # mean over the interval, not one step
            train_loss_sum, train_loss_n = 0.0, 0
            record = {f"val/{k}": v for k, v in losses.items()}
            if cfg.hellaswag_interval and iter_num % cfg.hellaswag_interval == 0:
                hs = evals.hellaswag(raw_model, device, ctx, items=hellaswag_items, limit=cfg.hellaswag_limit or None,
                                     rank=rank, world_size=world)
                record["hellaswag/acc_norm"] = hs["acc_norm"]
            if cfg.humaneval_interval and iter_num % cfg.humaneval_interval == 0 and master:
                record["humaneval/loss"] = evals.humaneval(raw_model, device, ctx, cfg.humaneval_path)["loss"]
            log(f"eval {iter_num:7d} | train {'   n/a' if train_loss is None else f'{train_loss:.4f}'} | " + " | ".join(f"{k} {v:.4f}" for k, v in record.items())
                + (" | new best" if improved else f" | best {best_val:.4f}"))
            if master:
                extra = {k: v for k, v in record.items() if not k.startswith("val/")}
                metrics.log_eval(iter_num, iter_num * cfg.total_batch_size, losses, train_loss=train_loss, best=improved, primary=primary_val, **extra)
                tracker.log(record, iter_num)
            if improved:
                save(best_path, iter_num)
            if cfg.early_stop_patience and bad_evals >= cfg.early_stop_patience:
                stop_reason = (f"early stop: no new best {primary_val} loss in {bad_evals} evals; "
                               f"use {best_path} (val loss {best_val:.4f})")

        if not ddp:
            stopping = stop.signal
        if stop_reason is None and stopping is not None:
            stop_reason = f"stopped by {stopping} after iter {iter_num}; resume with --init_from=resume"
        if last or stop_reason or (iter_num % cfg.ckpt_interval == 0 and iter_num > start_iter):
            saved = save(ckpt_path, iter_num)
            if cfg.keep_last_n and saved and iter_num % cfg.ckpt_interval == 0:
                step_path = os.path.join(cfg.out_dir, f"ckpt_{iter_num:07d}.pt")
                if not os.path.exists(step_path):
                    os.link(ckpt_path, step_path)  # a hard link: no copy, survives ckpt.pt being replaced
                old = sorted(n for n in os.listdir(cfg.out_dir) if n.startswith("ckpt_") and n[5:12].isdigit())
                for name in old[:-cfg.keep_last_n]:
                    os.remove(os.path.join(cfg.out_dir, name))
        if last or stop_reason:
            break

        # one optimizer step over grad_accum micro-batches
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(grad_accum):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)  # async only where it is safe: CUDA
            sync = nullcontext() if (not ddp or micro == grad_accum - 1) else model.no_sync()  # all-reduce grads once per step
            with sync:
                with ctx:
                    _, loss = model(x, y)
                    loss = loss / grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        loss_val, norm_val = loss_sum.item(), norm.item()

        # skip an update from a NaN/inf loss or a loss spike, so the optimizer state is never poisoned
        bad = not math.isfinite(loss_val) or (dtype != "float16" and not math.isfinite(norm_val))  # fp16: the scaler skips inf grads itself
        if cfg.spike_factor and loss_ema is not None and loss_val > cfg.spike_factor * loss_ema:
            bad = True
        if bad:
            bad_steps += 1
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            log(f"iter {iter_num}: skipped the update (loss {loss_val:.4f}, grad norm {norm_val:.4f}); {bad_steps} in a row")
            if bad_steps >= cfg.max_bad_steps:
                msg = (f"{bad_steps} bad steps in a row at iter {iter_num}; the last good checkpoint is {ckpt_path}: "
                       f"lower learning_rate or raise warmup_iters, then resume")
                log(f"stopping: {msg}")
                raise Diverged(msg)
        else:
            bad_steps = 0
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_ema = loss_val if loss_ema is None else 0.95 * loss_ema + 0.05 * loss_val
            train_loss_sum, train_loss_n = train_loss_sum + loss_val, train_loss_n + 1
            if master:
                log_losses.append(loss_val)
        iter_num += 1
        if ddp:  # every rank stops after the same step when any of them was signalled
            flag = torch.tensor([stop.signal is not None], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                stopping = stop.signal or "a signal on another rank"

        # log
        runtime.synchronize(device)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num - start_iter > 1:  # the first iteration includes compilation
            dt_ema = dt if dt_ema is None else 0.9 * dt_ema + 0.1 * dt
        if iter_num % cfg.log_interval == 0 and master:
            loss_log = sum(log_losses) / len(log_losses) if log_losses else loss_val
            log_losses.clear()
            tok_s = cfg.total_batch_size / dt
            mfu = monitor.mfu(tok_s, flops_per_token, peak_flops)
            eta = (cfg.max_iters - iter_num) * (dt_ema or dt)
            log(f"iter {iter_num:7d} | loss {loss_log:.4f} | lr {lr:.2e} | norm {norm_val:7.4f} | {dt * 1000:8.1f} ms | "
                f"{tok_s:9,.0f} tok/s | mfu {'   n/a' if mfu is None else f'{100 * mfu:5.1f}%'} | eta {fmt_duration(eta)}")
            metrics.log_step(iter_num, iter_num * cfg.total_batch_size, loss_log, lr, norm_val, dt * 1000, tok_s, mfu,
                             epoch=train_loader.epoch)
            tracker.log({"train/loss": loss_log, "lr": lr, "grad_norm": norm_val, "tok_per_sec": tok_s}, iter_num)

    log(stop_reason or f"done: {iter_num} iterations, best {primary_val} loss {best_val:.4f} ({best_path})")
    if tracker is not None:
        tracker.close()
    return 0


def run(argv):
    """main() with one-line errors for the mistakes users make, and clean distributed shutdown."""
    try:
        return main(argv)
    except (ConfigError, shards.DataError, CheckpointError, monitor.MonitorError, pretrained.PretrainedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except Diverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 3
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or a plain RuntimeError on MPS
        if "out of memory" not in str(e):
            raise
        print("error: out of GPU memory; lower batch_size (gradient accumulation keeps total_batch_size); "
              "bench.py --find_batch_size finds the largest that fits", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint (save_checkpoint is atomic, the last one is intact)
        print("error: interrupted without writing a new checkpoint (the last one is intact); resume with "
              "--init_from=resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
