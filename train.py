"""Train a GPT-2 model on token shards. Reads top to bottom as the run happens.

    python train.py config/train_gpt2_124m_4070.py --batch_size=8
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2_124m_3090.py
    python train.py config/train_gpt2_124m_4070.py --init_from=resume --max_iters=30000   # extend a run
    python train.py config/train_gpt2_124m_4070.py --plan        # the arithmetic only; needs no data

Settings and their defaults: gptlib/train_settings.py (TrainConfig) and model.py (GPTConfig), or --help.
Nothing is written until every check has passed: a refused run leaves out_dir as it was. The pieces live in
gptlib/: the run's folder (run_dir.py), where it starts from (resume.py), the wrappers around the model
(runtime.wrap_model), the step (step.py), what changes over the run (schedules.py), the evals (evals.py).
"""
import contextlib
import dataclasses
import functools
import os
import sys
import time

import torch

from gptlib import checkpoint, evals, memory, monitor, optim, resume, runtime, schedules, shards
from gptlib.errors import ConfigError, Diverged, Interrupted, run_command
from gptlib.loader import TokenLoader
from gptlib.locks import DirLock
from gptlib.run_dir import RunDir, StopRequest
from gptlib.settings import format_config, load_config, no_effect_notes
from gptlib.step import TrainStep
from gptlib.train_settings import TrainConfig
from model import GPT, GPTConfig

OOM_HINT = ("lower batch_size (gradient accumulation keeps total_batch_size); bench.py --find_batch_size finds "
            "the largest that fits")


def main(argv):
    notes = []  # what nanoGPT's setting names became, if any were given
    cfg = load_config(TrainConfig, argv, notes=notes)
    with contextlib.ExitStack() as cleanup:
        procs = runtime.start_processes(cfg.device, cfg.backend, cfg.dist_timeout_min)
        cleanup.callback(runtime.stop_processes)
        try:
            return run_training(cfg, procs, cleanup, notes)
        except KeyboardInterrupt:  # a second Ctrl-C: save_checkpoint is atomic, so the last checkpoint is intact
            raise Interrupted("interrupted without writing a new checkpoint (the last one is intact); resume with "
                              "--init_from=resume") from None


def print_plan(cfg, procs, dtype, batch):
    """--plan: the run's arithmetic (tokens, time, memory), from the settings alone: no data read, nothing written."""
    ckpt = resume.load_start(cfg)[0] if cfg.init_from == "resume" else None
    with torch.device("meta"):  # parameter counts without allocating a byte
        model = GPT(GPTConfig(**resume.model_args_for(cfg, ckpt)))
    manifest = shards.read_manifest(cfg.data_dir, required=False) if os.path.isdir(cfg.data_dir) else None
    if procs.master:
        print(batch)
        print("\n".join(monitor.run_plan_lines(model, cfg, ckpt["loop"].get("iter_num", 0) if ckpt else 0,
                                               shards.split_tokens(manifest, "train") if manifest else None)))
        print(f"checkpoints: {optim.checkpoint_bytes(model, cfg) / 1e9:.2f} GB each")
        print("\n".join(memory.plan_lines(model, cfg, "bfloat16" if cfg.dtype == "auto" else cfg.dtype, procs.world)))
    return 0


def open_data(cfg, procs, cleanup):
    """The datasets the run reads, locked against a prepare (shared: other runs may read them) and checked before
    anything is written: (the train loader, the val sets, the primary one's name, HellaSwag's items or None)."""
    shards.list_shards(cfg.data_dir, "train")  # a missing data_dir is named as such (and never made for the lock)
    if procs.master:  # first, so a dataset being prepared is named as such rather than found incomplete
        cleanup.enter_context(DirLock(cfg.data_dir, "train.py", shared=True))
    manifest = shards.check_dataset(cfg.data_dir)  # complete, and its shards are the ones it lists
    val_sets = evals.parse_val_sets(cfg.val_sets, cfg.data_dir)
    primary_val = evals.check_primary_val(cfg.primary_val, val_sets)
    val_dirs = {d for _, d, _ in val_sets} - {cfg.data_dir}
    for data_dir in val_dirs if procs.master else ():
        cleanup.enter_context(DirLock(data_dir, "train.py", shared=True))
    for data_dir in val_dirs:
        shards.check_dataset(data_dir)
    if cfg.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"vocab_size={cfg.vocab_size} is below the {manifest['vocab_size']:,} token ids of "
                          f"{cfg.data_dir}; use vocab_size >= {manifest['vocab_size']} (50304 is GPT-2's, padded)")
    loader = TokenLoader(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, procs.rank, procs.world,
                         seed=cfg.seed, order=cfg.data_order, verify=cfg.verify_data)
    for _, data_dir, split in val_sets:  # the val shards evals will read, checked now
        TokenLoader(data_dir, split, cfg.eval_batch_size or cfg.batch_size, cfg.block_size, procs.rank, procs.world,
                    shuffle=False, verify=cfg.verify_data).check()
    hellaswag_items = evals.load_hellaswag(cfg.hellaswag_path or None) if cfg.hellaswag_interval else None  # fail now, not hours in
    if procs.master:
        monitor.check_trackers(cfg.wandb_log, cfg.tensorboard_log)
    if cfg.humaneval_interval:
        evals.load_humaneval(cfg.humaneval_path)
    return loader, val_sets, primary_val, hellaswag_items


def log_plan(run, model, cfg, optimizer, iter_num, train_tokens, device, dtype, world):
    """The plan every run logs at its start; returns the GPUs' peak FLOP/s for MFU (None where unknown)."""
    for line in monitor.run_plan_lines(model, cfg, iter_num, train_tokens):
        run.log(line)
    run.log(f"optimizer: {optimizer.describe()}; {optim.state_bytes(model, cfg, world) / memory.GIB:.2f} GiB of "
            f"states per {'GPU' if device.startswith('cuda') else 'process'}")
    run.checkpoint_bytes = optim.checkpoint_bytes(model, cfg)
    run.log(f"checkpoints: {run.checkpoint_bytes / 1e9:.2f} GB each (ckpt.pt, ckpt_best.pt"
            + (f", {cfg.keep_last_n} numbered" if cfg.keep_last_n else "") + ")")
    peak_flops, peak_note = monitor.peak_flops(device.split(":")[0], dtype, override_tflops=cfg.peak_tflops)
    if peak_note:
        run.log(peak_note)
    return peak_flops


def bad_step(run, cfg, result, it, in_a_row):
    """Log a skipped update; stop the run (exit 3) after max_bad_steps of them in a row."""
    run.log(f"iter {it}: skipped the update (loss {result.loss:.4f}, grad norm {result.norm:.4f}); {in_a_row} in a row")
    if in_a_row >= cfg.max_bad_steps:
        back = f"the last good checkpoint is {run.last_good}" if run.last_good else "no checkpoint was written yet"
        msg = (f"{in_a_row} bad steps in a row at iter {it}; {back}: lower learning_rate or raise warmup_iters, then "
               + ("resume" if run.last_good else "start again"))
        run.log(f"stopping: {msg}")
        raise Diverged(f"training diverged: {msg}")


def run_training(cfg, procs, cleanup, notes=()):
    # ------------------------------------------------------------------ devices, precision, and the plan-only path
    device, rank, world, master = procs.device, procs.rank, procs.world, procs.master
    dtype = runtime.pick_dtype(device, cfg.dtype)
    if procs.ddp and cfg.sharding == "fsdp" and dtype == "float16":  # GradScaler unscales whole gradients, not slices
        raise ConfigError("sharding='fsdp' trains in bfloat16 or float32 here, not float16 (its loss scaler needs "
                          "whole gradients); use --dtype=float32 or --sharding=optimizer on this GPU")
    runtime.check_fp8(device, cfg.fp8_head)
    threads = runtime.prepare_device(device, cfg.cpu_threads)
    ctx = runtime.autocast(device, dtype)
    batch = monitor.batch_line(cfg, world)  # (each part's tokens checked to divide into micro-steps)
    run = RunDir(cfg, master, cleanup)
    for note in list(notes) + no_effect_notes(cfg, world=world):  # the plan prints; a run also keeps it in log.txt
        print(note) if cfg.plan and master else run.log(note)
    if cfg.plan:
        return print_plan(cfg, procs, dtype, batch)

    # ------------------------------------------------------------------ output dir and data: locked, then checked
    run.lock()
    resume.check_out_dir(cfg)
    train_loader, val_sets, primary_val, hellaswag_items = open_data(cfg, procs, cleanup)

    # ------------------------------------------------------------------ model, wrapped for training
    torch.manual_seed(cfg.seed)
    ckpt, from_file = resume.load_start(cfg)
    model_args = resume.model_args_for(cfg, ckpt, adopt=from_file)
    if ckpt is not None:
        checkpoint.check_vocab(model_args["vocab_size"], cfg.init_from if from_file else resume.resume_path(cfg),
                               "train a new model on this data (without --init_from), or continue this one with the "
                               "tool that trained it")
    model = resume.build_model(cfg, ckpt, model_args, run.log)
    memory.check_fits(model, cfg, dtype, world)  # memory_gib: a run that would not fit stops now (issue 27)
    wrapped = runtime.wrap_model(model.to(device), cfg, procs, run.log)  # checkpointing, FSDP2 or DDP, compile
    raw_model = wrapped.raw

    # ------------------------------------------------------------------ optimizer, and where the run goes on from
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))  # fp16 needs loss scaling
    optimizer = optim.make_optimizer(raw_model, cfg, device)
    restored = resume.restore(cfg, ckpt, from_file, optimizer, scaler, train_loader, dtype, primary_val, run.log)
    loop, run.last_good, start_iter = restored.loop, restored.last_good, restored.loop.iter_num
    train_loader.check()  # the shard the run starts on: bad data fails here, before anything is written
    resume.best_so_far(cfg, loop, run.log)
    del ckpt  # free the host copy of the weights and optimizer state

    # ------------------------------------------------------------------ the plan, then the run is valid: it writes
    flops_per_token = monitor.model_flops_per_token(raw_model, cfg.block_size)
    peak_flops = log_plan(run, raw_model, cfg, optimizer, loop.iter_num, train_loader.total_tokens, device, dtype, world)
    what = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{device.split(':')[0]}, {threads} torch threads"
    header = [f"config:\n{format_config(cfg)}",
              f"device {device} ({what}), dtype {dtype}, world size {world}, {batch}"]
    metrics = run.open(header, cfg.init_from == "resume", start_iter, restored.keep_finished, restored.changes, loop.tokens)
    tracker = cleanup.enter_context(monitor.tracker_for(cfg)) if master else None

    # ------------------------------------------------------------------ training loop
    step = TrainStep(wrapped, optimizer, scaler, ctx, cfg, dtype, cfg.batch_size * cfg.block_size * world)
    to_device = runtime.BatchCopier(device)
    next_batch = lambda: to_device(*train_loader.next_batch())  # noqa: E731 (pinned, asynchronous on CUDA)
    snapshot = functools.partial(checkpoint.training_state, wrapped, optimizer, scaler, loop, train_loader, cfg, dtype, procs)
    schedule = dataclasses.replace(cfg, attn_window=raw_model.config.attn_window)  # an adopted model's own window
    stop = StopRequest()
    cleanup.callback(stop.restore)
    stopping, stop_reason, bad_steps = None, None, 0  # under DDP only the all-reduced flag sets stopping: ranks agree
    pace = monitor.Pace()  # tok/s, MFU and ETA from recent steps, the ETA with the evals and checkpoints to come
    while True:
        last = loop.iter_num >= cfg.max_iters
        values = schedules.at(loop.iter_num, schedule)  # this iteration's learning rate, momentum, window, ...
        if cfg.untie_at and not values.tied and runtime.head_tied(raw_model):  # the late untie (record #53)
            runtime.untie_head(wrapped, optimizer, cfg, procs, run.log)

        # evaluate (skipped at the first iteration of a resume when the checkpoint was written after this eval)
        if (loop.iter_num % cfg.eval_interval == 0 or last) and loop.iter_num != loop.last_eval_iter:
            t_eval = time.time()
            scored, record = evals.evals_of_run(raw_model, cfg, loop.iter_num, val_sets, hellaswag_items, device, ctx,
                                                rank, world, values.window or None)
            improved, train_loss = loop.after_eval(loop.iter_num, scored[primary_val].loss)
            run.log(monitor.eval_line(loop.iter_num, train_loss, record, scored, improved, loop.best_val))
            if master:
                metrics.log_evals(loop.iter_num, loop.tokens, scored, record, train_loss, improved, primary_val)
                tracker.log(record, loop.iter_num)
            if improved:
                run.save(run.best_path, snapshot)
            pace.event("eval", time.time() - t_eval)
            if cfg.early_stop_patience and loop.bad_evals >= cfg.early_stop_patience:
                stop_reason = (f"early stop: no new best {primary_val} loss in {loop.bad_evals} evals; "
                               f"use {run.best_path} (val loss {loop.best_val:.4f})")

        # checkpoint, and stop
        stopping = stopping if procs.ddp else stop.signal
        if stop_reason is None and stopping is not None:
            stop_reason = f"stopped by {stopping.name} after iter {loop.iter_num}; resume with --init_from=resume"
        predecay = cfg.lr_schedule == "wsd" and loop.iter_num == schedules.decay_start(cfg) and loop.iter_num > start_iter
        numbered = loop.iter_num % cfg.ckpt_interval == 0
        if last or stop_reason or predecay or (numbered and loop.iter_num > start_iter):
            t_ckpt = time.time()
            run.checkpoint(loop.iter_num, snapshot, predecay, numbered)
            pace.event("ckpt", time.time() - t_ckpt)
        if last or stop_reason:
            break

        # one optimizer step (gptlib/step.py), timed alone: not the eval or checkpoint before it
        t0 = time.time()
        torch.manual_seed(runtime.step_seed(cfg.seed, rank, loop.iter_num))  # dropout: per rank and step, resumable
        result = step(next_batch, values, loop.loss_ema)
        bad_steps = bad_steps + 1 if result.skipped else 0
        if result.skipped:
            bad_step(run, cfg, result, loop.iter_num, bad_steps)
        loop.after_step(result.loss, result.skipped, values.tokens)
        if procs.ddp:  # every rank stops after the same step when any of them was signalled
            stopping = stop.agreed(procs)

        # log: the step's own time; tok/s, MFU and ETA from the running mean (monitor.Pace)
        runtime.synchronize(device)
        dt = time.time() - t0
        pace.step(dt, values.tokens)
        if loop.iter_num % cfg.log_interval == 0 and master:
            loss = loop.take_log_loss(result.loss)
            tok_s = pace.tokens_per_second(values.tokens, dt)
            mfu = monitor.mfu(tok_s, flops_per_token, peak_flops and peak_flops * world)  # every GPU's peak
            eta = pace.eta(None, monitor.events_left(loop.iter_num, cfg.max_iters, cfg.eval_interval),
                           monitor.events_left(loop.iter_num, cfg.max_iters, cfg.ckpt_interval), dt,
                           tokens_left=schedules.tokens_in(loop.iter_num, cfg.max_iters, cfg), rate=tok_s)
            run.log(monitor.step_line(loop.iter_num, loss, values.lr, result.norm, dt * 1000, tok_s, mfu, eta))
            metrics.log_step(loop.iter_num, loop.tokens, loss, values.lr, result.norm, dt * 1000, tok_s, mfu,
                             epoch=train_loader.epoch)
            tracker.log({"train/loss": loss, "lr": values.lr, "grad_norm": result.norm, "tok_per_sec": tok_s}, loop.iter_num)

    run.log(stop_reason or f"done: {loop.iter_num} iterations, best {primary_val} loss {loop.best_val:.4f} ({run.best_path})")
    return 128 + stopping if stopping is not None and not last else 0


def run(argv):
    """The command in-process: main() under the error policy; returns the exit code."""
    return run_command(main, argv, oom_hint=OOM_HINT)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
