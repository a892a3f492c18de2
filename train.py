"""Train a GPT-2 model on token shards. Reads top to bottom as the run happens.

    python train.py config/train_gpt2_124m_4070.py --batch_size=8
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2_124m_3090.py
    python train.py config/train_gpt2_124m_4070.py --init_from=resume --max_iters=30000   # extend a run
    python train.py config/train_gpt2_124m_4070.py --plan        # the arithmetic only; needs no data

Settings and their defaults: gptlib/train_settings.py (TrainConfig) and model.py (GPTConfig), or --help.
Nothing is written until every check has passed: a refused run leaves out_dir as it was.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gptlib import attention, evals, memory, monitor, optim, paths, pretrained, runtime, shards
from gptlib.checkpoint import (BEST_NAME, CKPT_NAME, LoopState, check_vocab, load_checkpoint, peek_loop, remove_stale_temps,
                               save_checkpoint)
from gptlib.errors import EXIT_DIVERGED, CheckpointError, ConfigError, Interrupted, UserError, run_command
from gptlib.loader import TokenLoader
from gptlib.locks import DirLock
from gptlib.settings import format_config, load_config
from gptlib.train_settings import INIT_FROM, TrainConfig
from model import GPT, GPTConfig

MODEL_KEYS = [f.name for f in dataclasses.fields(GPTConfig)]  # the settings that define the model
RESUME_MAY_CHANGE = ("block_size", "dropout", "zero_init")  # model settings a resume may change (a smaller block_size only)
NOT_COMPARED = ("init_from", "overwrite", "plan", "resume_from")  # settings that describe the command, not the run
PREDECAY_NAME = "ckpt_predecay.pt"  # wsd: the checkpoint at the start of the decay, from which a run can be extended
OOM_HINT = ("lower batch_size (gradient accumulation keeps total_batch_size); bench.py --find_batch_size finds "
            "the largest that fits")


class Diverged(UserError):
    """Too many skipped (NaN/inf or spiking) updates in a row."""
    exit_code = EXIT_DIVERGED


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint and exits with 128 + the
    signal. Under torchrun the agent forwards the signal to every worker and SIGKILLs them after its
    --shutdown_timeout (30 s by default), so the step plus the checkpoint must fit in that."""

    def __init__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now, the last checkpoint is intact
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)


def model_args_for(cfg, ckpt, adopt=False):
    """The GPTConfig fields this run trains: the checkpoint's on resume (a shape change is refused) or when
    continuing another run's checkpoint file (adopt: its model, whatever the settings say), OpenAI's for
    init_from='gpt2...', else the settings'."""
    args = {k: getattr(cfg, k) for k in MODEL_KEYS}
    if ckpt is not None:
        saved, saved_cfg = ckpt["model_args"], ckpt.get("config", {})
        if adopt:
            check_adopted(cfg, saved)
        for k in MODEL_KEYS if not adopt else ():  # a GPT-2 fine-tune keeps vocab 50257 while its settings say 50304
            if k not in RESUME_MAY_CHANGE and args[k] not in (saved.get(k), saved_cfg.get(k)):
                raise CheckpointError(f"the checkpoint has {k}={saved.get(k)!r} but the settings say {args[k]!r}; "
                                      f"resume with the checkpoint's model settings or start a new out_dir")
        if cfg.block_size > saved["block_size"] and saved.get("pos_emb", "learned") == "learned":
            raise CheckpointError(f"block_size={cfg.block_size} is larger than the checkpoint's {saved['block_size']}; "
                                  f"its learned position embeddings cannot grow (RoPE models can): use block_size <= "
                                  f"{saved['block_size']}")
        args.update({k: v for k, v in saved.items() if k in MODEL_KEYS and k not in RESUME_MAY_CHANGE})
        args["zero_init"] = saved.get("zero_init", False)  # an init-only switch: loaded weights are past it
    elif cfg.init_from in pretrained.HUB_REPOS:
        if GPTConfig(**args).not_gpt2():
            raise ConfigError(f"init_from={cfg.init_from!r} loads OpenAI's GPT-2, which these model settings would change "
                              f"({', '.join(GPTConfig(**args).not_gpt2())}); fine-tune it without the modern model "
                              f"settings (the optimizer and schedule settings may stay)")
        n_layer, n_head, n_embd = pretrained.GPT2_SHAPES[cfg.init_from]
        args.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=pretrained.GPT2_VOCAB, bias=True,
                    tie_weights=True, block_size=min(cfg.block_size, pretrained.GPT2_CONTEXT))
    return args


def check_adopted(cfg, saved):
    """--init_from=FILE continues that file's model. A model setting given a value other than its default that
    the checkpoint's model does not have (config/recipe_modern.py on a nanoGPT checkpoint) is refused in one line
    naming the overrides that keep the checkpoint's model, rather than dropped silently or failing in the model."""
    default, gpt = TrainConfig(), GPTConfig()
    asked = [k for k in MODEL_KEYS if k not in RESUME_MAY_CHANGE and getattr(cfg, k) != getattr(default, k)
             and getattr(cfg, k) != saved.get(k, getattr(gpt, k))]
    if asked:
        differ = ", ".join(f"{k}={getattr(cfg, k)!r} (it has {saved.get(k, getattr(gpt, k))!r})" for k in asked)
        keep = " ".join(f"--{k}={saved.get(k, getattr(gpt, k))}" for k in asked)
        raise ConfigError(f"--init_from={cfg.init_from} continues that checkpoint's model, but the settings ask for "
                          f"another: {differ}; keep its model with {keep} (optimizer and schedule settings may "
                          f"stay), or train a new model without --init_from")


def continue_from_file(cfg, ckpt, optimizer, log):
    """--init_from=PATH: this run continues the checkpoint's run (nanoGPT's too) in a new out_dir: its iteration
    and best val loss, and its AdamW moments when they fit this optimizer exactly (else it starts afresh, said in
    one line). The data order starts afresh: another run's position means nothing in this dataset."""
    source = ckpt.get("imported_from", "this toolkit")
    loop = LoopState(iter_num=ckpt["loop"].get("iter_num", 0), best_val=ckpt["loop"].get("best_val", math.inf),
                     tokens=ckpt["loop"].get("tokens", 0))
    why = optim.load_foreign_state(optimizer, ckpt.get("optimizer"))
    log(f"init: continuing {source}'s run from {cfg.init_from} at iter {loop.iter_num} (best val {loop.best_val:.4f}); "
        + ("its optimizer state continues" if why is None else f"the optimizer starts afresh ({why})")
        + "; the data order and the schedule follow this run's settings")
    return loop


def later_checkpoint(ckpt_path, resume_iter):
    """Resuming from another checkpoint (a wsd extension from ckpt_predecay.pt) would overwrite ckpt.pt: if
    ckpt.pt is further on (a finished run), the name to keep it under, and its iteration; else None."""
    it = peek_loop(ckpt_path).get("iter_num", 0)
    if it <= resume_iter:
        return None
    name, k = f"ckpt_final_{it:07d}.pt", 1
    while os.path.exists(os.path.join(os.path.dirname(ckpt_path), name)):
        name, k = f"ckpt_final_{it:07d}_{k}.pt", k + 1
    return name, it


def created(path, written):
    """path, noted as created by this run when it does not exist yet."""
    if not os.path.exists(path):
        written["files"].append(path)
    return path


def remove_if_failed(exc_type, written):
    """On the way out of a new run that failed before writing any checkpoint: remove the files it created
    (log, config, metrics), so a refused or failed start leaves out_dir as it was. Returns False: the
    exception goes on."""
    if exc_type is not None and not written["checkpoint"]:
        for path in written["files"]:
            with contextlib.suppress(OSError):
                os.remove(path)
    return False


def saved_settings(saved):
    """The TrainConfig a checkpoint was written with (settings it predates take their defaults)."""
    return TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})


def check_wsd_extension(cfg, saved, it):
    """A warmup-stable-decay run whose decay has begun cannot be extended from where it is: the larger
    max_iters would move the decay later, and the rate would jump from its decayed value back up to the
    peak, undoing the annealing (a loss spike, then a worse model). Extend from the checkpoint written where
    the decay began instead: it is stable-phase, so the new schedule continues it exactly as planned."""
    old = saved_settings(saved)
    if old.lr_schedule == "wsd" and it > optim.decay_start(old) and optim.lr_at(it, cfg) > optim.lr_at(it, old) * (1 + 1e-9):
        raise ConfigError(f"this run's learning rate has been decaying since iter {optim.decay_start(old)} (wsd); the new "
                          f"settings would raise it from {optim.lr_at(it, old):.2e} back to {optim.lr_at(it, cfg):.2e}. "
                          f"Extend from the checkpoint taken where the decay began: --resume_from={PREDECAY_NAME}")


def changed_settings(cfg, saved, it):
    """One line per setting that differs from the checkpoint's, saying what the change does."""
    old = saved_settings(saved)
    lines = []
    for f in dataclasses.fields(TrainConfig):
        k = f.name
        if k in NOT_COMPARED or k not in saved or getattr(cfg, k) == saved[k]:
            continue
        line = f"resume: {k} {saved[k]!r} -> {getattr(cfg, k)!r}"
        if k == "seed":
            line += ": kept at the checkpoint's seed, so the data order and dropout continue exactly"
        if k == "data_order":
            line += ": kept at the checkpoint's order, so the run reads exactly the data it would have"
        if k in ("adamw_states", "muon_states"):
            line += ": the saved states are converted to it (rounded once, when they get leaner)"
        lines.append(line)
    w_old, w_new = optim.window_at(it, old), optim.window_at(it, cfg)
    if w_old != w_new:
        lines.append(f"resume: the attention window at iter {it} is now {w_new} (it would have been {w_old}), because "
                     f"its warmup follows the new settings")
    lr_old, lr_new = optim.lr_at(it, old), optim.lr_at(it, cfg)
    if not math.isclose(lr_old, lr_new, rel_tol=1e-9):
        keep = []  # the old schedule, as it was: lr_decay_iters alone is cosine's, not a wsd run's (issue 28)
        if cfg.lr_schedule != old.lr_schedule:
            keep.append(f"--lr_schedule={old.lr_schedule}")
        if old.lr_schedule == "cosine" and cfg.max_iters != old.max_iters and not cfg.lr_decay_iters:
            keep.append(f"--lr_decay_iters={old.lr_decay_iters or old.max_iters}")
        lines.append(f"resume: the learning rate at iter {it} is now {lr_new:.2e} (it would have been {lr_old:.2e}), "
                     f"because the schedule follows the new settings"
                     + (f"; to keep decaying as before instead, resume with {' '.join(keep)}" if lr_new > lr_old and keep
                        else ""))
    return lines


def quality_lines(model, cfg):
    """The plan's lines on how long GPT-2 small's quality takes with this run's recipe (monitor.TOKENS_TO_GPT2)."""
    c = model.config
    return monitor.gpt2_quality(monitor.recipe_of(c, cfg.optimizer), (c.n_layer, c.n_embd) == (12, 768),
                                cfg.total_batch_size, cfg.tokens_per_sec or None)


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


def run_training(cfg, procs, cleanup, notes=()):
    # ------------------------------------------------------------------ devices and precision
    device, rank, world, master = procs.device, procs.rank, procs.world, procs.master
    device_type = device.split(":")[0]
    dtype = runtime.pick_dtype(device, cfg.dtype)
    fsdp = procs.ddp and cfg.sharding == "fsdp"  # weights, gradients and states in slices across the ranks
    if fsdp and dtype == "float16":  # torch.amp.GradScaler unscales whole gradients, not FSDP2's DTensor slices
        raise ConfigError("sharding='fsdp' trains in bfloat16 or float32 here, not float16 (its loss scaler needs "
                          "whole gradients); use --dtype=float32 or --sharding=optimizer on this GPU")
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed, fine for training
    torch.backends.cudnn.allow_tf32 = True
    ctx = runtime.autocast(device, dtype)
    cuda = device_type == "cuda"
    if device_type == "cpu":
        runtime.keep_freed_memory()  # ~2x faster CPU steps: no page faults for re-allocated activations
    threads = runtime.cpu_threads(cfg.cpu_threads)
    grad_accum = monitor.grad_accum_steps(cfg.total_batch_size, cfg.batch_size, cfg.block_size, world)
    eval_batch_size = cfg.eval_batch_size or cfg.batch_size
    ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
    resume_path = os.path.join(cfg.out_dir, cfg.resume_from or CKPT_NAME)  # an absolute resume_from stays itself
    best_path = os.path.join(cfg.out_dir, BEST_NAME)
    pending = []  # log lines held back until every check has passed: a refused run writes nothing

    def log(msg):
        if not master:
            return
        if pending is not None:
            pending.append(msg)
        else:
            write_log(msg)

    for note in notes:  # the plan prints; a run also keeps it in log.txt
        if cfg.plan and master:
            print(note)
        elif not cfg.plan:
            log(note)

    # ------------------------------------------------------------------ plan only: needs no data, writes nothing
    if cfg.plan:
        ckpt = load_checkpoint(resume_path) if cfg.init_from == "resume" else None
        with torch.device("meta"):  # parameter counts without allocating a byte
            model = GPT(GPTConfig(**model_args_for(cfg, ckpt)))
        manifest = shards.read_manifest(cfg.data_dir, required=False) if os.path.isdir(cfg.data_dir) else None
        plan = monitor.plan_run(n_params=model.get_num_params(), n_params_non_embedding=model.get_num_params(True),
                                tokens_per_step=cfg.total_batch_size, max_iters=cfg.max_iters,
                                iter_num=ckpt["loop"].get("iter_num", 0) if ckpt else 0,
                                train_tokens=shards.split_tokens(manifest, "train") if manifest else None,
                                tokens_per_sec=cfg.tokens_per_sec or None, n_params_extra_embeds=model.extra_embed_params())
        if master:
            print(f"gradient accumulation {grad_accum} x {cfg.batch_size} x {cfg.block_size} x {world} GPU(s) "
                  f"= {cfg.total_batch_size:,} tokens/step")
            print("\n".join(monitor.format_plan(plan)))
            print("\n".join(quality_lines(model, cfg)))
            print(f"checkpoints: {optim.checkpoint_bytes(model, cfg) / 1e9:.2f} GB each")
            print("\n".join(memory.plan_lines(model, cfg, "bfloat16" if cfg.dtype == "auto" else cfg.dtype, world)))  # a GPU's
        return 0

    # ------------------------------------------------------------------ output dir: one train.py at a time
    if master:  # (an out_dir made for the lock is removed with it if the run is refused before writing)
        cleanup.enter_context(DirLock(cfg.out_dir, "train.py"))
        remove_stale_temps(cfg.out_dir)
    if cfg.init_from != "resume" and os.path.exists(ckpt_path) and not cfg.overwrite:
        raise ConfigError(f"{cfg.out_dir} already holds a run ({ckpt_path}); continue it with --init_from=resume, "
                          f"or pick another out_dir")
    if cfg.init_from.endswith(".pt") and paths.inside(cfg.init_from, cfg.out_dir) and os.path.exists(ckpt_path):
        name = os.path.relpath(os.path.realpath(cfg.init_from), os.path.realpath(cfg.out_dir))  # its own input
        raise ConfigError(f"--init_from={cfg.init_from} is in out_dir {cfg.out_dir}, whose {CKPT_NAME} this run would "
                          f"replace; continue from it there with --init_from=resume --resume_from={name} (a later "
                          f"{CKPT_NAME} is kept as ckpt_final_*.pt), or pick another out_dir")

    # ------------------------------------------------------------------ data: no prepare may change it while we read
    shards.list_shards(cfg.data_dir, "train")  # a missing data_dir is named as such (and never made for the lock)
    if master:  # first, so a dataset being prepared is named as such rather than found incomplete
        cleanup.enter_context(DirLock(cfg.data_dir, "train.py", shared=True))
    manifest = shards.check_dataset(cfg.data_dir)  # complete, and its shards are the ones it lists
    val_sets = evals.parse_val_sets(cfg.val_sets, cfg.data_dir)
    primary_val = evals.check_primary_val(cfg.primary_val, val_sets)
    if master:
        for data_dir in {d for _, d, _ in val_sets} - {cfg.data_dir}:
            cleanup.enter_context(DirLock(data_dir, "train.py", shared=True))
    for data_dir in {d for _, d, _ in val_sets} - {cfg.data_dir}:
        shards.check_dataset(data_dir)
    if cfg.vocab_size < manifest["vocab_size"]:
        raise ConfigError(f"vocab_size={cfg.vocab_size} is below the {manifest['vocab_size']:,} token ids of "
                              f"{cfg.data_dir}; use vocab_size >= {manifest['vocab_size']} (50304 is GPT-2's, padded)")
    train_loader = TokenLoader(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, rank, world, seed=cfg.seed,
                               order=cfg.data_order, verify=cfg.verify_data)
    for _, data_dir, split in val_sets:  # the val shards evals will read, checked now
        TokenLoader(data_dir, split, eval_batch_size, cfg.block_size, rank, world, shuffle=False,
                    verify=cfg.verify_data).check()
    hellaswag_items = evals.load_hellaswag(cfg.hellaswag_path or None) if cfg.hellaswag_interval else None  # fail now, not hours in
    if master:
        monitor.check_trackers(cfg.wandb_log, cfg.tensorboard_log)
    if cfg.humaneval_interval:
        evals.load_humaneval(cfg.humaneval_path)

    # ------------------------------------------------------------------ model
    torch.manual_seed(cfg.seed)
    from_file = cfg.init_from not in INIT_FROM  # a checkpoint file (nanoGPT's too) whose run continues in out_dir
    ckpt = load_checkpoint(resume_path) if cfg.init_from == "resume" else load_checkpoint(cfg.init_from) if from_file else None
    if ckpt is not None and not from_file and ckpt.get("imported_from"):
        raise CheckpointError(f"{resume_path} was written by {ckpt['imported_from']}, not by this train.py; continue "
                              f"it with --init_from={resume_path} and a new --out_dir")
    model_args = model_args_for(cfg, ckpt, adopt=from_file)
    if ckpt is not None:
        check_vocab(model_args["vocab_size"], cfg.init_from if from_file else resume_path,
                    "train a new model on this data (without --init_from), or continue this one with the tool "
                    "that trained it")
    if ckpt is not None:
        saved_block = ckpt["model_args"]["block_size"]
        if model_args["pos_emb"] == "rope" and cfg.block_size > saved_block:  # rotary angles are computed, not learned
            log(f"resume: block_size {saved_block} -> {cfg.block_size}: RoPE positions extend; the model has not "
                f"seen positions beyond {saved_block} yet, so expect the loss to rise briefly")
        model = GPT(GPTConfig(**{**model_args, "block_size": max(saved_block, cfg.block_size)
                                 if model_args["pos_emb"] == "rope" else saved_block}))
        model.load_state_dict(ckpt["model"])
        if cfg.block_size < model.config.block_size:
            model.crop_block_size(cfg.block_size)
    elif cfg.init_from in pretrained.HUB_REPOS:
        model = pretrained.load_pretrained(cfg.init_from, dropout=cfg.dropout)
        if cfg.block_size < model.config.block_size:
            model.crop_block_size(cfg.block_size)
    else:
        model = GPT(GPTConfig(**model_args))
    if cfg.memory_gib:  # the card planned for: a run that would not fit stops now, not at its first step (issue 27)
        need = memory.step_bytes(model, cfg, dtype, world)["total"]
        if need > (1 - memory.FIT_MARGIN) * cfg.memory_gib * memory.GIB:
            raise ConfigError(memory.fit_line(model, cfg, dtype, need, world))
    model.to(device)
    model.checkpointing = cfg.activation_checkpointing
    if fsdp:  # before the optimizer, which must hold the sharded parameters
        runtime.shard_model(model, device)
    n_params = model.get_num_params()

    # ------------------------------------------------------------------ optimizer and loop state
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # fp16 needs loss scaling, bf16 does not
    optimizer = optim.make_optimizer(model, cfg, device)
    loop = LoopState()
    if from_file:
        loop = continue_from_file(cfg, ckpt, optimizer, log)
    elif ckpt is not None:
        check_wsd_extension(cfg, ckpt.get("config", {}), ckpt["loop"].get("iter_num", 0))
        changes = changed_settings(cfg, ckpt.get("config", {}), ckpt["loop"].get("iter_num", 0))
        for line in changes:
            log(line)
        cfg.seed = ckpt.get("config", {}).get("seed", cfg.seed)  # the run's own seed: data order and dropout continue
        cfg.data_order = ckpt["loop"].get("loader", {}).get("order", "stream")  # and its own data order (the loader keeps it)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit this optimizer ({e}); resume with "
                                  f"the checkpoint's optimizer settings") from None
        optim.fit_state_to_params(optimizer)  # a smaller block_size cropped the position embedding
        if ckpt.get("dtype") in (dtype, None) or "float16" not in (dtype, ckpt.get("dtype")):
            scaler.load_state_dict(ckpt["scaler"])
        else:  # bf16 <-> fp16: the loss scale of one means nothing to the other
            log(f"resume: dtype {ckpt['dtype']} -> {dtype}: the fp16 loss scaler starts afresh")
        loop = LoopState.from_state_dict(ckpt["loop"])
        train_loader.load_state_dict(loop.loader)
        log(f"resumed from {resume_path} at iter {loop.iter_num} (epoch {train_loader.epoch}, "
            f"best {primary_val} loss {loop.best_val:.4f})")
    train_loader.check()  # the shard the run starts on: bad data fails here, before anything is written
    start_iter, resumed = loop.iter_num, cfg.init_from == "resume"
    keep_finished = None  # (name, iter) under which a later ckpt.pt this resume would overwrite is kept
    if resumed and os.path.abspath(resume_path) != os.path.abspath(ckpt_path) and os.path.exists(ckpt_path):
        keep_finished = later_checkpoint(ckpt_path, loop.iter_num)
    if resumed and os.path.exists(best_path):  # never replace a better best with a worse one (an earlier branch)
        best_there = peek_loop(best_path).get("best_val", math.inf)
        if best_there < loop.best_val:
            log(f"resume: {best_path} holds val loss {best_there:.4f}, better than this checkpoint's best "
                f"{loop.best_val:.4f}; it is replaced only by a better model")
            loop.best_val = best_there
    last_good = resume_path if resumed else None  # the checkpoint a failure can go back to
    del ckpt  # free the host copy of the weights and optimizer state

    if cuda and (model.config.doc_mask or model.config.attn_window) and not attention.flex_runs(torch.device(device))[0]:
        log(f"attention: {attention.flex_runs(torch.device(device))[1]}: SDPA with a dense mask instead (the same "
            f"results; memory grows with block_size^2 per row, so keep rows short)")

    # ------------------------------------------------------------------ DDP, then compile (PyTorch's order for overlap)
    raw_model = model  # (under fsdp already sharded, above: it all-gathers and reduce-scatters itself)
    if procs.ddp and not fsdp:
        model = DDP(model, device_ids=[procs.local_rank] if cuda else None)
    ddp_model = model
    if cfg.compile:
        ok, why = runtime.compile_available(device)
        if ok:
            log("compiling the model (the first iterations are slow)")
            model = torch.compile(model)
        else:
            log(f"compile switched off: {why}")

    # ------------------------------------------------------------------ plan
    flops_per_token = monitor.model_flops_per_token(raw_model, cfg.block_size)
    peak_flops, peak_note = monitor.peak_flops(device_type, dtype, override_tflops=cfg.peak_tflops)
    plan = monitor.plan_run(n_params=n_params, n_params_non_embedding=raw_model.get_num_params(True),
                            tokens_per_step=cfg.total_batch_size, max_iters=cfg.max_iters, iter_num=loop.iter_num,
                            train_tokens=train_loader.total_tokens, tokens_per_sec=cfg.tokens_per_sec or None,
                            n_params_extra_embeds=raw_model.extra_embed_params())
    for line in monitor.format_plan(plan) + quality_lines(raw_model, cfg):
        log(line)
    log(f"optimizer: {optimizer.describe()}; {optim.state_bytes(raw_model, cfg, world) / memory.GIB:.2f} GiB of states "
        f"per {'GPU' if cuda else 'process'}")
    log(f"checkpoints: {optim.checkpoint_bytes(raw_model, cfg) / 1e9:.2f} GB each (ckpt.pt, ckpt_best.pt"
        + (f", {cfg.keep_last_n} numbered" if cfg.keep_last_n else "") + ")")
    if peak_note:
        log(peak_note)

    # ------------------------------------------------------------------ the run is valid: from here on it writes
    written = {"files": [], "checkpoint": False}  # what this run created, and whether a checkpoint was written
    if master and not resumed:  # a new run that fails before its first checkpoint (a full or read-only disk)
        cleanup.push(lambda exc_type, exc, tb: remove_if_failed(exc_type, written))  # takes its files with it
    log_file = None
    if master:
        log_file = open(created(os.path.join(cfg.out_dir, "log.txt"), written), "a")
        cleanup.callback(log_file.close)

    def write_log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    if master and keep_finished:  # a hard link: the finished model stays, under its own name
        name, it = keep_finished
        os.link(ckpt_path, os.path.join(cfg.out_dir, name))
        metrics_path = os.path.join(cfg.out_dir, monitor.METRICS_FILE)
        if os.path.exists(metrics_path):
            shutil.copyfile(metrics_path, os.path.join(cfg.out_dir, name.replace("ckpt_", "metrics_").replace(".pt", ".jsonl")))
        pending.append(f"resume: {ckpt_path} held iter {it}, later than this resume from iter {start_iter}: kept as "
                       f"{name} (and its metrics), so this run's ckpt.pt replaces nothing")
    if master:
        held, pending = pending, None
        write_log(f"config:\n{format_config(cfg)}")
        what = torch.cuda.get_device_name(device) if cuda else f"{device_type}, {threads} torch threads"
        write_log(f"device {device} ({what}), dtype {dtype}, "
                  f"world size {world}, gradient accumulation {grad_accum} x {cfg.batch_size} x {cfg.block_size} "
                  f"= {cfg.total_batch_size:,} tokens/step")
        for msg in held:
            write_log(msg)
        with open(created(os.path.join(cfg.out_dir, "config.json"), written), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
    metrics = monitor.MetricsLog(created(os.path.join(cfg.out_dir, monitor.METRICS_FILE), written),
                                 resume_iter=start_iter if resumed else None) if master else None
    if master and resumed:  # plot.py marks where a run was resumed, and what changed there
        metrics.log("resume", start_iter, tokens=loop.tokens, changes=[c.removeprefix("resume: ") for c in changes])
    tracker = monitor.make_tracker(cfg.wandb_log, cfg.tensorboard_log, cfg.wandb_project,
                                   cfg.wandb_run_name or os.path.basename(os.path.abspath(cfg.out_dir)),
                                   dataclasses.asdict(cfg), os.path.join(cfg.out_dir, "tb")) if master else None
    if tracker is not None:
        cleanup.callback(tracker.close)

    def save(path):
        """Checkpoint on rank 0; a NaN model is never saved. True if the file was written."""
        nonlocal last_good
        states = optimizer.state_dict()  # whole on rank 0 (sharded: a collective every rank joins)
        weights = runtime.model_state(raw_model, sharded=fsdp)  # whole, on rank 0 (a collective under fsdp)
        if not master:
            return False
        if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
            log(f"not saving {path}: the model holds NaN/inf values")
            return False
        loop.loader = train_loader.state_dict()
        save_checkpoint(path, {"model": weights, "model_args": dataclasses.asdict(raw_model.config),
                               "config": dataclasses.asdict(cfg), "optimizer": states,
                               "scaler": scaler.state_dict(), "dtype": dtype, "loop": loop.state_dict(),
                               "world_size": world})
        written["checkpoint"] = True
        if path == ckpt_path:
            last_good = path
        return True

    # ------------------------------------------------------------------ training loop
    to_device = runtime.BatchCopier(device)
    window_schedule = dataclasses.replace(cfg, attn_window=raw_model.config.attn_window)  # an adopted model's own
    stop = StopRequest()
    cleanup.callback(stop.restore)
    stopping = None  # the signal this process acts on; under DDP only the all-reduced flag sets it, so all ranks agree
    stop_reason, bad_steps = None, 0
    pace = monitor.Pace()  # tok/s, MFU and ETA from recent steps, the ETA with the evals and checkpoints to come
    while True:
        last = loop.iter_num >= cfg.max_iters
        if raw_model.config.attn_window:  # this iteration's window (its warmup), for the eval and the step below
            raw_model.window.fill_(optim.window_at(loop.iter_num, window_schedule))

        # evaluate (skipped at the first iteration of a resume when the checkpoint was written after this eval)
        if (loop.iter_num % cfg.eval_interval == 0 or last) and loop.iter_num != loop.last_eval_iter:
            t_eval = time.time()
            scored = evals.eval_val_sets(raw_model, val_sets, eval_batch_size, cfg.block_size, cfg.eval_tokens,
                                         device, ctx, rank, world, verify=cfg.verify_data)
            losses = {k: r.loss for k, r in scored.items()}
            loop.last_eval_iter = loop.iter_num
            improved = losses[primary_val] < loop.best_val
            if improved:
                loop.best_val, loop.bad_evals = losses[primary_val], 0
            else:
                loop.bad_evals += 1
            train_loss = loop.train_loss_sum / loop.train_loss_n if loop.train_loss_n else None  # mean since the last eval
            loop.train_loss_sum, loop.train_loss_n = 0.0, 0
            record = {f"val/{k}": v for k, v in losses.items()}
            if cfg.hellaswag_interval and loop.iter_num % cfg.hellaswag_interval == 0:
                hs = evals.hellaswag(raw_model, device, ctx, items=hellaswag_items, limit=cfg.hellaswag_limit or None,
                                     rank=rank, world_size=world)
                record["hellaswag/acc_norm"] = hs["acc_norm"]
            if cfg.humaneval_interval and loop.iter_num % cfg.humaneval_interval == 0:
                record["humaneval/loss"] = evals.humaneval(raw_model, device, ctx, cfg.humaneval_path,
                                                           rank=rank, world_size=world)["loss"]
            log(f"eval {loop.iter_num:7d} | train {'   n/a' if train_loss is None else f'{train_loss:.4f}'} | "
                + " | ".join(f"{k} {v:.4f}" + (f" {scored[k[4:]].plus_minus()} ({monitor.human_count(scored[k[4:]].tokens)} tok)"
                                               if k.startswith("val/") else "") for k, v in record.items())
                + (" | new best" if improved else f" | best {loop.best_val:.4f}"))
            if master:
                extra = {k: v for k, v in record.items() if not k.startswith("val/")}
                extra.update({f"val_tokens/{k}": r.tokens for k, r in scored.items()})
                extra.update({f"val_stderr/{k}": r.stderr for k, r in scored.items()})
                metrics.log_eval(loop.iter_num, loop.tokens, losses, train_loss=train_loss, best=improved,
                                 primary=primary_val, **extra)
                tracker.log(record, loop.iter_num)
            if improved:
                save(best_path)
            pace.event("eval", time.time() - t_eval)
            if cfg.early_stop_patience and loop.bad_evals >= cfg.early_stop_patience:
                stop_reason = (f"early stop: no new best {primary_val} loss in {loop.bad_evals} evals; "
                               f"use {best_path} (val loss {loop.best_val:.4f})")

        # checkpoint, and stop
        if not procs.ddp:
            stopping = stop.signal
        if stop_reason is None and stopping is not None:
            stop_reason = f"stopped by {stopping.name} after iter {loop.iter_num}; resume with --init_from=resume"
        predecay = cfg.lr_schedule == "wsd" and loop.iter_num == optim.decay_start(cfg) and loop.iter_num > start_iter
        if last or stop_reason or predecay or (loop.iter_num % cfg.ckpt_interval == 0 and loop.iter_num > start_iter):
            t_ckpt = time.time()
            saved = save(ckpt_path)
            pace.event("ckpt", time.time() - t_ckpt)
            if predecay and saved:  # the point a wsd run can be extended from (a hard link: no extra disk yet)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(cfg.out_dir, PREDECAY_NAME))
                os.link(ckpt_path, os.path.join(cfg.out_dir, PREDECAY_NAME))
            if cfg.keep_last_n and saved and loop.iter_num % cfg.ckpt_interval == 0:
                step_path = os.path.join(cfg.out_dir, f"ckpt_{loop.iter_num:07d}.pt")
                if not os.path.exists(step_path):
                    os.link(ckpt_path, step_path)  # a hard link: no copy, survives ckpt.pt being replaced
                old = sorted(n for n in os.listdir(cfg.out_dir) if n.startswith("ckpt_") and n[5:12].isdigit())
                for name in old[:-cfg.keep_last_n]:
                    os.remove(os.path.join(cfg.out_dir, name))
        if last or stop_reason:
            break

        # one optimizer step over grad_accum micro-batches, timed alone (not the eval or checkpoint before it)
        t0 = time.time()
        torch.manual_seed(runtime.step_seed(cfg.seed, rank, loop.iter_num))  # dropout: per rank and step, resumable
        lr = optim.set_lr(optimizer, loop.iter_num, cfg)
        loss_sum = torch.zeros((), device=device)
        x, y = to_device(*train_loader.next_batch())
        for micro in range(grad_accum):
            # fsdp reduce-scatters every micro-step: accumulating whole gradients would undo its memory saving
            sync = contextlib.nullcontext() if (not procs.ddp or fsdp or micro == grad_accum - 1) else ddp_model.no_sync()
            with sync:  # gradients are all-reduced once per step, on the last micro-step
                with ctx:
                    loss = model(x, y)[1] / grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
            del loss  # nothing of the micro-step outlives it
            if micro + 1 < grad_accum:  # the next micro-batch is read and copied while the GPU computes this one;
                x, y = to_device(*train_loader.next_batch())  # never across a step, so checkpoints stay exact
        if procs.ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        optimizer.unscale_(scaler)
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        norm = norm.full_tensor() if fsdp else norm  # a DTensor under fsdp
        loss_val, norm_val = loss_sum.item(), norm.item()

        # skip an update from a NaN/inf loss or a loss spike, so the optimizer state is never poisoned
        bad = not math.isfinite(loss_val) or (dtype != "float16" and not math.isfinite(norm_val))  # fp16: the scaler skips inf grads itself
        if cfg.spike_factor and loop.loss_ema is not None and loss_val > cfg.spike_factor * loop.loss_ema:
            bad = True
        if bad:
            bad_steps += 1
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            log(f"iter {loop.iter_num}: skipped the update (loss {loss_val:.4f}, grad norm {norm_val:.4f}); "
                f"{bad_steps} in a row")
            if bad_steps >= cfg.max_bad_steps:
                back = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                msg = (f"{bad_steps} bad steps in a row at iter {loop.iter_num}; {back}: lower learning_rate or raise "
                       f"warmup_iters, then " + ("resume" if last_good else "start again"))
                log(f"stopping: {msg}")
                raise Diverged(f"training diverged: {msg}")
        else:
            bad_steps = 0
            optimizer.step(scaler)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loop.loss_ema = loss_val if loop.loss_ema is None else 0.95 * loop.loss_ema + 0.05 * loss_val
            loop.train_loss_sum, loop.train_loss_n = loop.train_loss_sum + loss_val, loop.train_loss_n + 1
            loop.log_loss_sum, loop.log_loss_n = loop.log_loss_sum + loss_val, loop.log_loss_n + 1
        loop.iter_num += 1
        loop.tokens += cfg.total_batch_size
        if procs.ddp:  # every rank stops after the same step when any of them was signalled
            flag = torch.tensor([stop.signal or 0], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                stopping = signal.Signals(flag.item())

        # log: the step's own time; tok/s, MFU and ETA from the running mean (monitor.Pace)
        runtime.synchronize(device)
        dt = time.time() - t0
        pace.step(dt)
        if loop.iter_num % cfg.log_interval == 0 and master:
            loss_log = loop.log_loss_sum / loop.log_loss_n if loop.log_loss_n else loss_val
            loop.log_loss_sum, loop.log_loss_n = 0.0, 0
            tok_s = cfg.total_batch_size / pace.step_seconds(dt)
            mfu = monitor.mfu(tok_s, flops_per_token, peak_flops and peak_flops * world)  # every GPU's peak
            eta = pace.eta(cfg.max_iters - loop.iter_num,
                           monitor.events_left(loop.iter_num, cfg.max_iters, cfg.eval_interval),
                           monitor.events_left(loop.iter_num, cfg.max_iters, cfg.ckpt_interval), dt)
            log(f"iter {loop.iter_num:7d} | loss {loss_log:.4f} | lr {lr:.2e} | norm {norm_val:7.4f} | {dt * 1000:8.1f} ms | "
                f"{tok_s:9,.0f} tok/s | mfu {'   n/a' if mfu is None else f'{100 * mfu:5.1f}%'} | eta {monitor.fmt_duration(eta)}")
            metrics.log_step(loop.iter_num, loop.tokens, loss_log, lr, norm_val, dt * 1000, tok_s, mfu,
                             epoch=train_loader.epoch)
            tracker.log({"train/loss": loss_log, "lr": lr, "grad_norm": norm_val, "tok_per_sec": tok_s}, loop.iter_num)

    log(stop_reason or f"done: {loop.iter_num} iterations, best {primary_val} loss {loop.best_val:.4f} ({best_path})")
    return 128 + stopping if stopping is not None and not last else 0


def run(argv):
    """The command in-process: main() under the error policy; returns the exit code."""
    return run_command(main, argv, oom_hint=OOM_HINT)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
