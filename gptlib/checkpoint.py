"""Checkpoints: written atomically, loaded without running code, versioned; and the training loop's
resumable state as one unit (LoopState).

A training checkpoint (version 2) holds:
    model, model_args   the weights and the model.GPTConfig that builds them
    config              the run's settings (gptlib/settings.py TrainConfig) as a dict
    optimizer, scaler   their state_dicts (gptlib/optim.py), and `dtype`, the precision they were made in
    loop                LoopState.state_dict(): iteration, tokens seen, best val, loss sums, loader position
    world_size          how many ranks wrote it (any number may resume it)
Version 1 checkpoints (loop fields at the top level, and RNG states) are upgraded when loaded.
"""
import dataclasses
import errno
import glob
import math
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field

import torch

from . import paths
from .errors import CheckpointError, short

CKPT_FORMAT = "gpt2-shards-ckpt"  # marks our checkpoints; anything else is refused with a clear message
CKPT_VERSION = 2
CKPT_NAME, BEST_NAME = "ckpt.pt", "ckpt_best.pt"
PREDECAY_NAME = "ckpt_predecay.pt"  # wsd: the checkpoint at the start of the decay, from which a run can be extended


@dataclass
class LoopState:
    """Everything the training loop carries from one step to the next, saved and restored as one unit:
    a field added here is checkpointed and resumed with no other edit."""
    iter_num: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on so far: a running total, right even when total_batch_size changed on resume
    best_val: float = math.inf  # lowest primary val loss so far (what ckpt_best.pt holds)
    bad_evals: int = 0  # evals since the last new best (early stopping)
    last_eval_iter: int = -1  # iteration of the last eval, so a resume does not repeat it
    loss_ema: float = None  # running mean of the step loss, for spike detection (None: no step yet)
    train_loss_sum: float = 0.0  # step losses since the last eval, for the eval line
    train_loss_n: int = 0
    log_loss_sum: float = 0.0  # step losses since the last log line, so a resumed run logs what an unbroken one would
    log_loss_n: int = 0
    loader: dict = field(default_factory=dict)  # the training loader's stream position (loader.TokenLoader.state_dict)

    def state_dict(self):
        return dataclasses.asdict(self)

    def after_eval(self, it, loss):
        """Note iteration it's primary val loss: (whether it is a new best, the mean train loss since the last
        eval or None)."""
        improved = loss < self.best_val
        self.best_val, self.bad_evals = (loss, 0) if improved else (self.best_val, self.bad_evals + 1)
        train_loss = self.train_loss_sum / self.train_loss_n if self.train_loss_n else None
        self.train_loss_sum, self.train_loss_n, self.last_eval_iter = 0.0, 0, it
        return improved, train_loss

    def after_step(self, loss, skipped, tokens):
        """Note a step of `tokens` tokens and its loss (not counted in the means when the update was skipped)."""
        if not skipped:
            self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
            self.train_loss_sum, self.train_loss_n = self.train_loss_sum + loss, self.train_loss_n + 1
            self.log_loss_sum, self.log_loss_n = self.log_loss_sum + loss, self.log_loss_n + 1
        self.iter_num += 1
        self.tokens += tokens

    def take_log_loss(self, last):
        """The mean step loss since the previous log line (the last step's when none counted), and start anew."""
        mean = self.log_loss_sum / self.log_loss_n if self.log_loss_n else last
        self.log_loss_sum, self.log_loss_n = 0.0, 0
        return mean

    @classmethod
    def from_state_dict(cls, state):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


def training_state(wrapped, optimizer, scaler, loop, loader, cfg, dtype, procs):
    """The training checkpoint of this moment (the format above) on rank 0, None on the others. A collective
    under sharding: the optimizer's and FSDP2's states are gathered, so every rank calls it."""
    from .runtime import model_state
    states = optimizer.state_dict()  # whole on rank 0 (sharded: a collective every rank joins)
    weights = model_state(wrapped.raw, sharded=wrapped.fsdp)  # whole, on rank 0 (a collective under fsdp)
    if not procs.master:
        return None
    loop.loader = loader.state_dict()
    return {"model": weights, "model_args": dataclasses.asdict(wrapped.raw.config), "config": dataclasses.asdict(cfg),
            "optimizer": states, "scaler": scaler.state_dict(), "dtype": dtype, "loop": loop.state_dict(),
            "world_size": procs.world}


def _upgrade_v1(ckpt):
    """Version 1 kept the loop's fields at the top level, and RNG states (dropout now reseeds per step)."""
    cfg = ckpt.get("config") or {}
    loop = {"iter_num": ckpt.get("iter_num", 0), "best_val": ckpt.get("best_val_loss", math.inf)}
    for k in ("bad_evals", "last_eval_iter", "loss_ema", "train_loss_sum", "train_loss_n", "loader"):
        if k in ckpt:
            loop[k] = ckpt[k]
    loop["tokens"] = loop["iter_num"] * cfg.get("total_batch_size", 0)
    dtype = "float16" if (ckpt.get("scaler") or {}).get("scale") is not None else None
    return {**{k: v for k, v in ckpt.items() if k in ("model", "model_args", "config", "optimizer", "scaler",
                                                     "world_size")},
            "loop": loop, "dtype": dtype, "format": CKPT_FORMAT, "version": CKPT_VERSION}


def _tensor_bytes(obj):
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def temp_name(path):
    """A temporary file beside `path`, unique to this process: two writers never share one."""
    return f"{path}.{os.getpid()}.tmp"


def remove_stale_temps(out_dir):
    """Temporary checkpoint files that a killed process left (call it while holding the out_dir lock)."""
    for p in glob.glob(os.path.join(glob.escape(out_dir), "ckpt*.pt.*.tmp")):
        os.remove(p)


def save_checkpoint(path, obj, need_bytes=0):
    """torch.save to a temporary file, fsync, then rename: a crash leaves the previous checkpoint intact.
    A full disk is a one-line CheckpointError that says how much space a checkpoint needs: need_bytes, the size of
    one with its optimizer state (optim.checkpoint_bytes), when this one is smaller (the first one, before any
    step, holds none: freeing only its size would fail again at the next)."""
    obj = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **obj}
    tmp = temp_name(path)
    folder = os.path.dirname(os.path.abspath(path))
    # the advice on failure: resume only where there is something to resume from (issue 28)
    kept = f"the previous {os.path.basename(path)} is intact" if os.path.exists(path) else "no checkpoint was written"
    then = resume_advice(folder)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: fsync the directory too, so the rename survives a power cut
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        # torch's zip writer reports a full disk as a RuntimeError ('unexpected pos ...'), not as an OSError
        writer_failed = isinstance(e, RuntimeError) and ("PytorchStreamWriter" in str(e) or "unexpected pos" in str(e))
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        need = max(_tensor_bytes(obj), need_bytes)
        if full or (writer_failed and shutil.disk_usage(folder).free < need):
            raise CheckpointError(f"disk full while writing {path} ({kept}): each checkpoint needs about "
                                  f"{need / 1e9:.3g} GB in {folder}; free space there, then {then}") from None
        if writer_failed:
            raise CheckpointError(f"could not write {path} ({short(e, 120)}); {kept}; check the disk at {folder}, "
                                  f"then {then}") from None
        raise


def resume_advice(folder):
    """How to go on after a failure in a run writing to `folder`: from the checkpoint that is there, if any."""
    if os.path.exists(os.path.join(folder, CKPT_NAME)):
        return "resume with --init_from=resume"
    if os.path.exists(os.path.join(folder, BEST_NAME)):
        return f"resume with --init_from=resume --resume_from={BEST_NAME}"
    return "run the same command again"


def load_checkpoint(path, map_location="cpu", mmap=False, use_instead=None, alternatives=True):
    """Load with weights_only=True, so a downloaded checkpoint cannot run code; verify it (every record against its
    stored CRC-32, every weight finite); upgrade older versions. mmap: read the loop state of a large file without
    its tensors (nothing is verified: nothing is used but the loop). use_instead(path) -> the settings that make
    this command use another checkpoint, named when this one is damaged ('--init_from=PATH' by default);
    alternatives=False: name none (the search for them loads each)."""
    bad = paths.problem(path, "file")
    if bad and bad[0] == "missing":
        raise CheckpointError(f"no checkpoint at {path}; train one first, or check out_dir")
    if bad:  # never "corrupt, move it away": that could be the user's dataset folder
        raise CheckpointError(f"checkpoint: {bad[1]}; give a checkpoint file (.pt)")
    damaged = None if mmap else damaged_record(path)
    if damaged:
        raise CheckpointError(f"{path} is damaged: {damaged} (a disk error, or a copy cut short)"
                              + other_checkpoints(path, use_instead, alternatives))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # a corrupt file fails in many ways (UnpicklingError, EOFError, IndexError, KeyError...)
        raise CheckpointError(f"{path} is corrupt or not a checkpoint this code can load safely "
                              f"({short(e, 160) or type(e).__name__}); move it away and use another checkpoint") from None
    if is_nanogpt(ckpt):
        ckpt = from_nanogpt(ckpt)
    elif not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit nor of nanoGPT; use one written by "
                              f"train.py (or by nanoGPT's train.py)")
    if ckpt.get("version") == 1:
        ckpt = _upgrade_v1(ckpt)
    if ckpt.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path} is checkpoint version {ckpt.get('version')!r}, this code reads versions 1 "
                              f"and {CKPT_VERSION}; use the version of this toolkit that wrote it")
    ckpt.setdefault("loop", {})
    if isinstance(ckpt.get("model"), dict) and "window" in ckpt["model"]:  # before issue 34 the window was a buffer
        ckpt["window"] = int(ckpt["model"].pop("window"))
    nonfinite = None if mmap else nonfinite_weight(ckpt)
    if nonfinite:
        raise CheckpointError(f"{path} holds {nonfinite}: a model that diverged, or a damaged file"
                              + other_checkpoints(path, use_instead, alternatives))
    return ckpt


def damaged_record(path):
    """Why the checkpoint file at path is damaged, or None: each record torch.save writes into its zip carries a
    CRC-32, which torch.load does not check (a few flipped bytes inside a weight load silently); read every record
    against it (zipfile's testzip; ~0.6 s a GB here). A file that is not a zip (torch's pre-1.6 format) is left
    to torch.load."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            name = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        return f"its zip structure cannot be read ({short(e, 80)})"
    return f"its record {name} does not match the checksum stored with it" if name else None


def nonfinite_weight(ckpt):
    """'NaN/inf in transformer.h.0.attn.c_attn.weight (3 of 1,769,472 values)' for the first weight that is not
    all finite, else None."""
    for name, t in (ckpt.get("model") or {}).items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            return f"NaN/inf in {name} ({bad:,} of {t.numel():,} values)"
    return None


def other_checkpoints(path, use_instead=None, search=True):
    """'; use the intact ckpt_best.pt beside it (iter 300): --resume_from=ckpt_best.pt' naming every other
    checkpoint in path's folder that verifies (ckpt.pt, ckpt_best.pt, ckpt_predecay.pt, numbered and final ones),
    newest first, or '; move it away and use another checkpoint' when there is none."""
    folder = os.path.dirname(os.path.abspath(path))
    intact = []
    for other in glob.glob(os.path.join(glob.escape(folder), "ckpt*.pt")) if search else ():
        if os.path.samefile(other, path):  # (a hard link: ckpt_predecay.pt, ckpt_NNNNNNN.pt share ckpt.pt's bytes)
            continue
        try:
            ckpt = load_checkpoint(other, alternatives=False)
        except CheckpointError:
            continue
        intact.append((ckpt["loop"].get("iter_num", 0), other))
    if not intact:
        return "; move it away and use another checkpoint"
    intact.sort(reverse=True)
    fix = use_instead or (lambda p: f"--init_from={p}")
    return "; use an intact one beside it: " + ", or ".join(
        f"{os.path.basename(p)} (iter {it}) with {fix(p)}" for it, p in intact)


def trained_window(ckpt):
    """The long attention window the checkpoint's run had reached (window_start grows it: schedules.window_at at
    the checkpoint's iteration): what its evals used, so what sample, eval and export run it with."""
    from types import SimpleNamespace

    from .schedules import window_at
    args, cfg = ckpt["model_args"], ckpt.get("config") or {}
    if "window" in ckpt:  # read from a checkpoint written before issue 34
        return ckpt["window"]
    run = SimpleNamespace(attn_window=args.get("attn_window", 0), window_start=cfg.get("window_start", 0),
                          max_iters=cfg.get("max_iters", 1))
    return window_at(ckpt.get("loop", {}).get("iter_num", 0), run)


# ----------------------------------------------------------------------------- nanoGPT's checkpoints

NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")  # its GPTConfig
NANOGPT_SETTINGS = ("learning_rate", "max_iters", "weight_decay", "beta1", "beta2", "grad_clip", "warmup_iters",
                    "lr_decay_iters", "min_lr", "batch_size", "eval_interval", "seed")  # same name and meaning here


def is_nanogpt(ckpt):
    """A dict as nanoGPT's train.py saves it: model, model_args with its GPTConfig fields, iter_num; no format."""
    return (isinstance(ckpt, dict) and "format" not in ckpt and isinstance(ckpt.get("model"), dict)
            and isinstance(ckpt.get("model_args"), dict) and all(k in ckpt["model_args"] for k in NANOGPT_MODEL_ARGS[:4]))


def from_nanogpt(ckpt):
    """A checkpoint of nanoGPT's train.py as one of ours (issue 17): the same parameter names (its model.py is
    GPT-2 with exact GELU, mlp_act='gelu_exact' here), its iteration and best val loss, and its AdamW state,
    whose parameter order is ours too (train.py checks the shapes before using it). Its data position is not
    kept (nanoGPT samples random windows), so a continued run starts this toolkit's data order afresh."""
    from model import GPTConfig
    args = {**dataclasses.asdict(GPTConfig()), **{k: ckpt["model_args"][k] for k in NANOGPT_MODEL_ARGS
                                                  if k in ckpt["model_args"]}}
    args.update(mlp_act="gelu_exact", tie_weights=True)  # nanoGPT ties wte and lm_head, and uses nn.GELU()
    model = {}
    for k, t in ckpt["model"].items():
        k = k.removeprefix("_orig_mod.")  # saved from a torch.compile'd model
        if k.endswith(".attn.bias") and t.dim() == 4:  # its causal-mask buffer (torch < 2.0), not a weight
            continue
        model[k] = t
    old = ckpt.get("config") or {}
    config = {k: old[k] for k in NANOGPT_SETTINGS if k in old}
    if all(k in old for k in ("batch_size", "block_size", "gradient_accumulation_steps")):
        config["total_batch_size"] = old["batch_size"] * old["block_size"] * old["gradient_accumulation_steps"]
    best = ckpt.get("best_val_loss", math.inf)
    iter_num = int(ckpt.get("iter_num", 0))
    return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "imported_from": "nanoGPT", "model": model,
            "model_args": args, "config": config, "dtype": None, "world_size": 1,
            "optimizer": {"adamw": ckpt["optimizer"]} if isinstance(ckpt.get("optimizer"), dict) else None,
            "loop": {"iter_num": iter_num, "best_val": float(best), "tokens": iter_num * config.get("total_batch_size", 0)}}


def peek_loop(path):
    """The LoopState dict of a checkpoint without reading its tensors (memory-mapped): cheap on a 1.5 GB file."""
    return dict(load_checkpoint(path, mmap=True)["loop"])


def describe(ckpt):
    """'iter 120, best val loss 3.2100' for messages."""
    loop = ckpt.get("loop", {})
    best = loop.get("best_val", math.inf)
    return f"iter {loop.get('iter_num', '?')}" + (f", best val loss {best:.4f}" if math.isfinite(best) else "")


def find_checkpoint(out_dir, prefer_best=True):
    """ckpt_best.pt if present (and preferred), else ckpt.pt."""
    if not os.path.isdir(out_dir):
        raise CheckpointError(f"out_dir {out_dir!r} does not exist; pass the --out_dir of a training run "
                              f"(or its config file, e.g. config/train_tiny_cpu.py)")
    names = [BEST_NAME, CKPT_NAME] if prefer_best else [CKPT_NAME]
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            return path
    raise CheckpointError(f"no {' or '.join(names)} in {out_dir!r}; train a model there first, or check --out_dir")


def model_from_checkpoint(ckpt):
    """The checkpoint's model, for inference: a run stopped while its window grew attends as it did then."""
    from model import GPT, GPTConfig
    try:
        args = ckpt["model_args"]
        model = GPT(GPTConfig(**{**args, "attn_window": trained_window(ckpt)} if args.get("attn_window") else args))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:  # a newer toolkit's settings, or mismatched weights
        raise CheckpointError(f"the checkpoint's model cannot be built by this model.py ({short(e, 160)}); "
                              f"use the version of this toolkit that wrote it") from None
    return model


MODEL_SOURCES = "'resume' (out_dir's ckpt_best.pt, else ckpt.pt), OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a checkpoint file (.pt, nanoGPT's too)"


def init_from_problem(init_from):
    """The settings message for an init_from that sample.py, eval.py and export.py cannot load, else None."""
    from .pretrained import HUB_REPOS
    if init_from == "resume" or init_from in HUB_REPOS or init_from.endswith(".pt"):
        return None
    return f"init_from must be {MODEL_SOURCES}; got {init_from!r}"


def check_vocab(vocab_size, described, fix):
    """Every dataset, prompt and eval here is GPT-2 tokens: a model with a smaller vocabulary (nanoGPT's
    character-level shakespeare_char has 65) would fail deep inside an embedding lookup (IndexError). Refuse it
    first, in one line ending with `fix` (issue 28)."""
    from .shards import VOCAB_SIZE
    if vocab_size < VOCAB_SIZE:
        kind = " (a character-level model, like nanoGPT's shakespeare_char)" if vocab_size < 1000 else ""
        raise CheckpointError(f"{described} has a {vocab_size:,}-token vocabulary{kind}, but this toolkit's data, "
                              f"prompts and evals are GPT-2 tokens (ids up to {VOCAB_SIZE - 1:,}); {fix}")


def load_model(init_from, out_dir, ckpt_file="", gpt2_tokens=True):
    """The model a command works on: (model, description, the checkpoint dict or None for OpenAI's weights).
    gpt2_tokens: the command feeds it GPT-2 token ids, so a smaller vocabulary is refused before it is built."""
    from .pretrained import HUB_REPOS, load_pretrained
    if init_from in HUB_REPOS:
        return load_pretrained(init_from), f"OpenAI {init_from}", None
    path = init_from if init_from.endswith(".pt") else (ckpt_file or find_checkpoint(out_dir))
    ckpt = load_checkpoint(path)
    source = f", imported from {ckpt['imported_from']}" if ckpt.get("imported_from") else ""
    if gpt2_tokens:
        check_vocab(ckpt["model_args"].get("vocab_size", 0), path,
                    "use a model trained on GPT-2 tokens (vocab_size >= 50257), or this one with the tool that trained it")
    return model_from_checkpoint(ckpt), f"{path} ({describe(ckpt)}{source})", ckpt
