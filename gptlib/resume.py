"""Where a run starts from, decided once: a new model, OpenAI's weights, its own checkpoint (--init_from=resume),
or another run's checkpoint file (nanoGPT's too) continued in a new out_dir. What a resume may change, what it
keeps, and what it refuses (docs/training.md, "Resuming and extending a run") all live here.

    model_args_for(cfg, ckpt, adopt)   the GPTConfig fields the run trains
    build_model(cfg, ckpt, from_file, log)   the model, loaded and cropped as the run needs it
    restore(cfg, ckpt, run, optimizer, scaler, loader, dtype, primary_val, log)   the LoopState to go on from
"""
import dataclasses
import math
import os

from model import GPT, GPTConfig

from . import paths, pretrained, schedules
from .checkpoint import BEST_NAME, CKPT_NAME, PREDECAY_NAME, LoopState, load_checkpoint, peek_loop
from .errors import CheckpointError, ConfigError
from .settings import checked_fix
from .train_settings import INIT_FROM, TrainConfig

MODEL_KEYS = [f.name for f in dataclasses.fields(GPTConfig)]  # the settings that define the model
RESUME_MAY_CHANGE = ("block_size", "dropout", "zero_init")  # model settings a resume may change (a smaller block_size only)
NOT_COMPARED = ("init_from", "overwrite", "plan", "resume_from")  # settings that describe the command, not the run


def resume_path(cfg):
    """The checkpoint --init_from=resume continues: out_dir's ckpt.pt, or resume_from (in out_dir, or a path)."""
    return os.path.join(cfg.out_dir, cfg.resume_from or CKPT_NAME)  # an absolute resume_from stays itself


def check_out_dir(cfg):
    """Refuse a new run over an existing one, and a run whose own input its first checkpoint would replace."""
    ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
    if cfg.init_from != "resume" and os.path.exists(ckpt_path) and not cfg.overwrite:
        raise ConfigError(f"{cfg.out_dir} already holds a run ({ckpt_path}); continue it with --init_from=resume, "
                          f"or pick another out_dir")
    if cfg.init_from.endswith(".pt") and paths.inside(cfg.init_from, cfg.out_dir) and os.path.exists(ckpt_path):
        name = os.path.relpath(os.path.realpath(cfg.init_from), os.path.realpath(cfg.out_dir))  # its own input
        raise ConfigError(f"--init_from={cfg.init_from} is in out_dir {cfg.out_dir}, whose {CKPT_NAME} this run would "
                          f"replace; continue from it there with --init_from=resume --resume_from={name} (a later "
                          f"{CKPT_NAME} is kept as ckpt_final_*.pt), or pick another out_dir")


def use_instead(cfg):
    """The settings that make this train.py use the checkpoint at another path (a damaged one's intact sibling)."""
    if cfg.init_from != "resume":
        return lambda path: f"--init_from={path}"
    out = os.path.realpath(cfg.out_dir)
    return lambda path: f"--resume_from={os.path.relpath(os.path.realpath(path), out) if paths.inside(path, out) else path}"


def load_start(cfg):
    """(the checkpoint the run starts from or None, whether it is another run's file continued here)."""
    from_file = cfg.init_from not in INIT_FROM  # a checkpoint file (nanoGPT's too) whose run continues in out_dir
    path = resume_path(cfg) if cfg.init_from == "resume" else cfg.init_from
    ckpt = load_checkpoint(path, use_instead=use_instead(cfg)) if cfg.init_from == "resume" or from_file else None
    if ckpt is not None and not from_file and ckpt.get("imported_from"):
        raise CheckpointError(f"{path} was written by {ckpt['imported_from']}, not by this train.py; continue "
                              f"it with --init_from={path} and a new --out_dir")
    return ckpt, from_file


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
        keep = checked_fix(cfg, {k: saved.get(k, getattr(gpt, k)) for k in asked})  # with the settings tied to them
        raise ConfigError(f"--init_from={cfg.init_from} continues that checkpoint's model, but the settings ask for "
                          f"another: {differ}; " + (f"keep its model with {keep} (optimizer and schedule settings "
                          f"may stay), or " if keep else "") + "train a new model without --init_from")


def build_model(cfg, ckpt, model_args, log):
    """The model the run trains, on the CPU: loaded from the checkpoint (its block_size cropped, or RoPE positions
    extended), OpenAI's weights, or a new one from model_args."""
    if ckpt is not None:
        saved_block = ckpt["model_args"]["block_size"]
        rope = model_args["pos_emb"] == "rope"
        if rope and cfg.block_size > saved_block:  # rotary angles are computed, not learned
            log(f"resume: block_size {saved_block} -> {cfg.block_size}: RoPE positions extend; the model has not "
                f"seen positions beyond {saved_block} yet, so expect the loss to rise briefly")
        model = GPT(GPTConfig(**{**model_args, "block_size": max(saved_block, cfg.block_size) if rope else saved_block}))
        model.load_state_dict(ckpt["model"])
    elif cfg.init_from in pretrained.HUB_REPOS:
        model = pretrained.load_pretrained(cfg.init_from, dropout=cfg.dropout)
    else:
        return _tied(GPT(GPTConfig(**model_args)), cfg, None)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return _tied(model, cfg, ckpt)


def _tied(model, cfg, ckpt):
    """Until untie_at, the head shares the token embedding (record #53): from the run's first step, or on a resume
    before the untie."""
    from .runtime import tie_head
    return tie_head(model) if schedules.tied_at(ckpt["loop"].get("iter_num", 0) if ckpt else 0, cfg) else model


def saved_settings(saved):
    """The TrainConfig a checkpoint was written with (settings it predates take their defaults)."""
    return TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})


def check_wsd_extension(cfg, saved, it):
    """A warmup-stable-decay run whose decay has begun cannot be extended from where it is: the larger
    max_iters would move the decay later, and the rate would jump from its decayed value back up to the
    peak, undoing the annealing (a loss spike, then a worse model). Extend from the checkpoint written where
    the decay began instead: it is stable-phase, so the new schedule continues it exactly as planned."""
    old, lr_at = saved_settings(saved), schedules.lr_at
    if old.lr_schedule == "wsd" and it > schedules.decay_start(old) and lr_at(it, cfg) > lr_at(it, old) * (1 + 1e-9):
        raise ConfigError(f"this run's learning rate has been decaying since iter {schedules.decay_start(old)} (wsd); "
                          f"the new settings would raise it from {lr_at(it, old):.2e} back to {lr_at(it, cfg):.2e}. "
                          f"Extend from the checkpoint taken where the decay began: --resume_from={PREDECAY_NAME}")


SETTING_NOTES = {  # what a changed setting does on resume, beyond the change itself
    "seed": "kept at the checkpoint's seed, so the data order and dropout continue exactly",
    "data_order": "kept at the checkpoint's order, so the run reads exactly the data it would have",
    "adamw_states": "the saved states are converted to it (rounded once, when they get leaner)",
    "muon_states": "the saved states are converted to it (rounded once, when they get leaner)",
}


def changed_settings(cfg, saved, it):
    """One line per setting that differs from the checkpoint's, saying what the change does."""
    old = saved_settings(saved)
    lines = []
    for f in dataclasses.fields(TrainConfig):
        k = f.name
        if k in NOT_COMPARED or k not in saved or getattr(cfg, k) == saved[k]:
            continue
        lines.append(f"resume: {k} {saved[k]!r} -> {getattr(cfg, k)!r}" + (f": {SETTING_NOTES[k]}" if k in SETTING_NOTES else ""))
    w_old, w_new = schedules.window_at(it, old), schedules.window_at(it, cfg)
    if w_old != w_new:
        lines.append(f"resume: the attention window at iter {it} is now {w_new} (it would have been {w_old}), because "
                     f"its warmup follows the new settings")
    lr_old, lr_new = schedules.lr_at(it, old), schedules.lr_at(it, cfg)
    if not math.isclose(lr_old, lr_new, rel_tol=1e-9):
        keep = {}  # the old schedule, as it was: lr_decay_iters alone is cosine's, not a wsd run's (issue 28)
        if cfg.lr_schedule != old.lr_schedule:
            keep["lr_schedule"] = old.lr_schedule
        if old.lr_schedule == "cosine" and cfg.max_iters != old.max_iters and not cfg.lr_decay_iters:
            keep["lr_decay_iters"] = old.lr_decay_iters or old.max_iters
        keep = checked_fix(cfg, keep) if lr_new > lr_old else ""
        lines.append(f"resume: the learning rate at iter {it} is now {lr_new:.2e} (it would have been {lr_old:.2e}), "
                     f"because the schedule follows the new settings"
                     + (f"; to keep decaying as before instead, resume with {keep}" if keep else ""))
    return lines


def continue_from_file(cfg, ckpt, optimizer, log):
    """--init_from=PATH: this run continues the checkpoint's run (nanoGPT's too) in a new out_dir: its iteration
    and best val loss, and its AdamW moments when they fit this optimizer exactly (else it starts afresh, said in
    one line). The data order starts afresh: another run's position means nothing in this dataset."""
    from .optim import load_foreign_state
    source = ckpt.get("imported_from", "this toolkit")
    loop = LoopState(iter_num=ckpt["loop"].get("iter_num", 0), best_val=ckpt["loop"].get("best_val", math.inf),
                     tokens=ckpt["loop"].get("tokens", 0))
    why = load_foreign_state(optimizer, ckpt.get("optimizer"))
    log(f"init: continuing {source}'s run from {cfg.init_from} at iter {loop.iter_num} (best val {loop.best_val:.4f}); "
        + ("its optimizer state continues" if why is None else f"the optimizer starts afresh ({why})")
        + "; the data order and the schedule follow this run's settings")
    return loop


@dataclasses.dataclass
class Restored:
    """Where the run goes on from."""
    loop: LoopState
    changes: list  # the 'resume: ...' lines (settings that differ from the checkpoint's)
    keep_finished: tuple | None  # (name, iter) under which a later ckpt.pt this resume would replace is kept
    last_good: str | None  # the checkpoint a failure can go back to


def restore(cfg, ckpt, from_file, optimizer, scaler, loader, dtype, primary_val, log):
    """The run's state after loading the checkpoint's optimizer, scaler and data position (a resume), or another
    run's iteration (from_file), or a fresh LoopState. Keeps the checkpoint's seed and data order in cfg."""
    if from_file:
        return Restored(continue_from_file(cfg, ckpt, optimizer, log), [], None, None)
    if ckpt is None:
        return Restored(LoopState(), [], None, None)
    saved, it = ckpt.get("config", {}), ckpt["loop"].get("iter_num", 0)
    check_wsd_extension(cfg, saved, it)
    changes = changed_settings(cfg, saved, it)
    for line in changes:
        log(line)
    cfg.seed = saved.get("seed", cfg.seed)  # the run's own seed: data order and dropout continue
    cfg.data_order = ckpt["loop"].get("loader", {}).get("order", "stream")  # and its own data order (the loader keeps it)
    _load_states(ckpt, optimizer, scaler, dtype, log)
    loop = LoopState.from_state_dict(ckpt["loop"])
    loader.load_state_dict(loop.loader)
    path = resume_path(cfg)
    log(f"resumed from {path} at iter {loop.iter_num} (epoch {loader.epoch}, best {primary_val} loss {loop.best_val:.4f})")
    return Restored(loop, changes, _keep_finished(cfg, loop.iter_num), path)


def _load_states(ckpt, optimizer, scaler, dtype, log):
    """The checkpoint's optimizer and loss-scaler states into this run's."""
    from .optim import fit_state_to_params
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this optimizer ({e}); resume with "
                              f"the checkpoint's optimizer settings") from None
    fit_state_to_params(optimizer)  # a smaller block_size cropped the position embedding
    if ckpt.get("dtype") in (dtype, None) or "float16" not in (dtype, ckpt.get("dtype")):
        scaler.load_state_dict(ckpt["scaler"])
    else:  # bf16 <-> fp16: the loss scale of one means nothing to the other
        log(f"resume: dtype {ckpt['dtype']} -> {dtype}: the fp16 loss scaler starts afresh")


def _keep_finished(cfg, resume_iter):
    """Resuming from another checkpoint (a wsd extension from ckpt_predecay.pt) would overwrite ckpt.pt: if
    ckpt.pt is further on (a finished run), the name to keep it under, and its iteration; else None."""
    path, ckpt_path = resume_path(cfg), os.path.join(cfg.out_dir, CKPT_NAME)
    if os.path.abspath(path) == os.path.abspath(ckpt_path) or not os.path.exists(ckpt_path):
        return None
    it = peek_loop(ckpt_path).get("iter_num", 0)
    if it <= resume_iter:
        return None
    name, k = f"ckpt_final_{it:07d}.pt", 1
    while os.path.exists(os.path.join(cfg.out_dir, name)):
        name, k = f"ckpt_final_{it:07d}_{k}.pt", k + 1
    return name, it


def best_so_far(cfg, loop, log):
    """Never replace a better ckpt_best.pt with a worse one (an earlier branch of this out_dir)."""
    best_path = os.path.join(cfg.out_dir, BEST_NAME)
    if cfg.init_from == "resume" and os.path.exists(best_path):
        best_there = peek_loop(best_path).get("best_val", math.inf)
        if best_there < loop.best_val:
            log(f"resume: {best_path} holds val loss {best_there:.4f}, better than this checkpoint's best "
                f"{loop.best_val:.4f}; it is replaced only by a better model")
            loop.best_val = best_there
