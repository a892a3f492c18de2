"""train.py's settings (also bench.py's, and the defaults sample.py, eval.py and export.py share).

The model's own settings (n_layer, block_size, ...) are model.GPTConfig's fields, declared there once
and inherited here; everything else a run needs is declared below, once, with its default, its valid
range and a one-line comment (see gptlib/settings.py).
"""
from dataclasses import dataclass, fields
from typing import ClassVar

from model import GPTConfig

from .errors import ConfigError
from .schedules import decay_start
from .settings import DEVICE_PATTERN, DTYPES, MAX_CPU_THREADS, setting

INIT_FROM = ["scratch", "resume", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]


# ----------------------------------------------------------------------------- nanoGPT's names
# karpathy/nanoGPT's train.py settings this toolkit names differently or has no use for: each becomes this
# project's settings, given the final values of the others (issue 28). Its other names are the same here.

def _tokens_of(name, value, s):
    """value x batch_size x block_size, nanoGPT's unit for evals and steps."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} (nanoGPT's) must be a whole number >= 1, got {value!r}")
    return value * s["batch_size"] * s["block_size"]


def _eval_iters(value, s):
    n = _tokens_of("eval_iters", value, s)
    return {"eval_tokens": n}, f"eval_tokens={n:,} (x batch_size {s['batch_size']} x block_size {s['block_size']})"


def _grad_accum(value, s):
    n = _tokens_of("gradient_accumulation_steps", value, s)  # nanoGPT divides its figure by the world size: this total is the same under torchrun
    return {"total_batch_size": n}, (f"total_batch_size={n:,} tokens a step (x batch_size {s['batch_size']} x "
                                     f"block_size {s['block_size']}, any number of GPUs)")


def _dataset(value, s):
    return {"data_dir": f"data/{value}"}, f"data_dir='data/{value}' (this toolkit's token shards: prepare_*.py)"


def _decay_lr(value, s):
    if value:
        return {}, "the cosine schedule, as here by default"
    return {"min_lr": s["learning_rate"], "warmup_iters": 0}, "min_lr=learning_rate, warmup_iters=0: a constant rate"


def _eval_only(value, s):
    if value:
        raise ConfigError("eval_only=True (nanoGPT): train.py here only trains; evaluate with eval.py and the same "
                          "config file (python eval.py CONFIG --init_from=...)")
    return {}, "nothing to do (train.py trains)"


def _unused(why):
    return lambda value, s: ({}, f"no meaning here: {why}")


NANOGPT_TRAIN = {
    "eval_iters": _eval_iters,
    "gradient_accumulation_steps": _grad_accum,
    "dataset": _dataset,
    "decay_lr": _decay_lr,
    "eval_only": _eval_only,
    "always_save_checkpoint": _unused("ckpt.pt is written every ckpt_interval and the best eval kept as ckpt_best.pt"),
}
NANOGPT_BLOCK_SIZE = 1024  # nanoGPT's default block_size, which its eval configs rely on


def _eval_max_tokens(value, s):
    per = s["block_size"] or NANOGPT_BLOCK_SIZE
    n = _tokens_of("eval_iters", value, {**s, "block_size": per})
    return {"max_tokens": n}, f"max_tokens={n:,} per split (x batch_size {s['batch_size']} x block_size {per})"


# nanoGPT evaluates with train.py and eval_only=True (config/eval_gpt2*.py); here eval.py reads those files
NANOGPT_EVAL = {"eval_iters": _eval_max_tokens, "eval_only": _unused("eval.py only evaluates")}
NANOGPT_SAMPLE = {"compile": _unused("sample.py runs eager (a few hundred small steps compile for longer than "
                                     "they run)")}


@dataclass
class TrainConfig(GPTConfig):
    """train.py's settings: model.GPTConfig's, then these."""
    NANOGPT: ClassVar[dict] = NANOGPT_TRAIN  # nanoGPT's names, translated (above)
    # --- data
    data_dir: str = setting("data/fineweb")  # dataset directory of train_*/val_* shards and manifest.json
    batch_size: int = setting(8, ge=1)  # micro-batch size per GPU, in sequences
    total_batch_size: int = setting(524288, ge=1)  # tokens per optimizer step (2**19, ~0.5M as GPT-3 Small); sets gradient accumulation
    seed: int = setting(1337, ge=0)  # seeds the model init, dropout and the shard order
    data_order: str = setting("windows", choices=["stream", "windows"])  # within a shard: block_size windows shuffled per epoch (windows; lower val loss for both recipes, BENCHMARKS.md) or front to back (stream)
    verify_data: bool = setting(True)  # check each shard against manifest.json's checksum when first read (~0.1 s per 100M tokens)
    # --- optimizer and schedule (gptlib/optim.py, gptlib/schedules.py)
    max_iters: int = setting(19073, ge=1)  # total optimizer steps (10B tokens at 2**19 tokens/step)
    optimizer: str = setting("adamw", choices=["adamw", "muon"])  # 'adamw', or 'muon': Muon for the hidden matrices, AdamW for the rest
    learning_rate: float = setting(6e-4, gt=0)  # peak learning rate of AdamW (GPT-3 Small's 6e-4)
    min_lr: float = setting(6e-5, ge=0)  # final learning rate, ~learning_rate/10 per Chinchilla
    lr_schedule: str = setting("cosine", choices=["cosine", "wsd"])  # 'cosine' (GPT-3), or 'wsd': warmup, stable, then linear decay
    warmup_iters: int = setting(715, ge=0)  # linear warmup steps (375M tokens at 2**19 tokens/step, as GPT-3)
    lr_decay_iters: int = setting(0, ge=0)  # cosine: iteration where it reaches min_lr; 0: max_iters (follows an extended run)
    decay_frac: float = setting(0.2, gt=0, le=1)  # wsd: the last fraction of max_iters over which the rate decays to min_lr
    weight_decay: float = setting(0.1, ge=0)  # AdamW weight decay on 2-D weights only
    table_lr: float = setting(0.0, ge=0)  # AdamW peak rate of the value-embedding and bigram tables (std-1 init); 0: learning_rate / 0.02, the token embedding's pace relative to its init
    beta1: float = setting(0.9, ge=0, lt=1)  # AdamW beta1
    beta2: float = setting(0.95, ge=0, lt=1)  # AdamW beta2
    muon_lr: float = setting(0.02, gt=0)  # Muon's peak learning rate (it follows the same schedule as learning_rate)
    muon_momentum: float = setting(0.95, ge=0, lt=1)  # Muon's momentum once warmed up
    muon_momentum_warmup: int = setting(300, ge=0)  # iterations over which Muon's momentum rises from 0.85 to muon_momentum
    muon_weight_decay: float = setting(0.0, ge=0)  # Muon's decoupled weight decay (multiplied by its learning rate)
    grad_clip: float = setting(1.0, ge=0)  # clip the global gradient norm to this (0: off)
    batch_schedule: list[int] = setting([])  # tokens per step in each of equal parts of the run (record #46: 131072,262144,393216), each a multiple of batch_size x block_size x GPUs; []: total_batch_size throughout
    batch_lr_power: float = setting(0.6, ge=0, le=1)  # with batch_schedule: each part's learning rates x (its tokens / total_batch_size, the batch they were tuned at)^this (record #46: 0.6)
    seq_schedule: list[int] = setting([])  # row length in each of equal parts of the run (record #89: short rows first), each dividing block_size; []: block_size throughout
    mtp: list[float] = setting([])  # multi-token prediction (record #53): the starting loss weights of predicting 2, 3, ... tokens ahead, each fading to 0 in turn (schedules.mtp_at; record: 0.5,0.25); []: the next token only
    untie_at: float = setting(0.0, ge=0, lt=1)  # with tie_weights=False: the head shares the token embedding until this fraction of the run, then each goes on alone (record #53: 2/3); 0: untied throughout
    window_start: int = setting(0, ge=0)  # attention window at iteration 0, growing to attn_window at max_iters in multiples of this (record #13: 128); 0: attn_window throughout
    # --- memory (gptlib/memory.py: train.py --plan --memory_gib=N)
    memory_gib: float = setting(0.0, ge=0)  # GiB of the GPU planned for (12: a 4070, 24: a 3090): --plan says whether the run fits and with which options; bench.py acts as such a card by capping the allocator; 0: no plan, the whole card
    activation_checkpointing: str = setting("none", choices=["none", "selective", "full"])  # recompute in the backward pass instead of keeping: 'full' each block (~+33% FLOPs, least memory), 'selective' the pointwise work only (gptlib/runtime.py CHECKPOINTING)
    adamw_states: str = setting("fp32", choices=["fp32", "8bit", "4bit"])  # AdamW's two moments: fp32 (8 bytes a parameter), or torchao's block-quantized 8bit (~2) or 4bit (~1); needs torchao
    muon_states: str = setting("fp32", choices=["fp32", "bf16"])  # Muon's momentum: fp32 (4 bytes a parameter) or bf16 (2)
    fsdp_dtype: str = setting("fp32", choices=["fp32", "bf16"])  # sharding='fsdp': the dtype weights are all-gathered in: fp32 (a replica's numerics) or bf16 (half the traffic; runtime.shard_model says what it changes)
    table_dtype: str = setting("fp32", choices=["fp32", "bf16"])  # the value-embedding and bigram tables' weights, gradients and AdamW moments: fp32, or bf16 as the records keep their embeddings (half the memory and traffic of 116M parameters at 124M)
    sharding: str = setting("none", choices=["none", "optimizer", "fsdp"])  # torchrun: 'none' (a whole replica per rank, DDP), 'optimizer' (each rank keeps ~1/world of the states: ZeRO-1), 'fsdp' (~1/world of the weights, gradients and states: FSDP2; AdamW only)
    # --- evaluation
    eval_interval: int = setting(250, ge=1)  # evaluate every this many iterations
    eval_tokens: int = setting(1048576, ge=0)  # val tokens per val set per eval: block_size windows at even strides over the whole split, the same every eval (0: the whole split)
    eval_batch_size: int = setting(0, ge=0)  # eval micro-batch; 0: same as batch_size (never larger: eval must fit where training fits)
    val_sets: list[str] = setting(["val"])  # validation sets: 'split' in data_dir, or 'DIR:split'
    primary_val: str = setting("")  # the val set that ckpt_best.pt and early stopping follow; '': the first of val_sets
    early_stop_patience: int = setting(0, ge=0)  # stop after this many evals without a new best val loss (0: never)
    hellaswag_interval: int = setting(0, ge=0)  # run HellaSwag every this many iterations (0: never)
    hellaswag_path: str = setting("")  # HellaSwag jsonl; '': download with huggingface_hub
    hellaswag_limit: int = setting(0, ge=0)  # evaluate only the first N HellaSwag items (0: all 10,042)
    humaneval_interval: int = setting(0, ge=0)  # HumanEval solution loss every this many iterations (0: never)
    humaneval_path: str = setting("")  # HumanEval.jsonl.gz path (required when humaneval_interval > 0)
    # --- output, and where the run starts from
    out_dir: str = setting("out", path="dir")  # checkpoints, log.txt, metrics.jsonl and config.json go here
    init_from: str = setting("scratch")  # 'scratch', 'resume' (from out_dir/ckpt.pt), OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a checkpoint file (.pt, nanoGPT's too) whose run continues in out_dir
    resume_from: str = setting("")  # init_from='resume': the checkpoint to continue, in out_dir or a path; '': ckpt.pt
    overwrite: bool = setting(False)  # allow init_from='scratch' to replace checkpoints already in out_dir
    ckpt_interval: int = setting(1000, ge=1)  # write out_dir/ckpt.pt every this many iterations (and at the end)
    keep_last_n: int = setting(0, ge=0)  # also keep this many numbered step checkpoints ckpt_NNNNNNN.pt (0: none)
    log_interval: int = setting(1, ge=1)  # print a log line every this many iterations
    # --- logging and planning
    plan: bool = setting(False)  # print the run plan (tokens, Chinchilla ratio, epochs, wall time) and exit
    tokens_per_sec: float = setting(0.0, ge=0)  # throughput for the plan's wall-time estimates (from bench.py); 0: measure as the run goes
    peak_tflops: float = setting(0.0, ge=0)  # the GPU's dense bf16/fp16 peak for MFU; 0: look it up in monitor.PEAK_TFLOPS
    wandb_log: bool = setting(False)  # log to Weights & Biases (needs the wandb package)
    wandb_project: str = setting("gpt2")  # wandb project
    wandb_run_name: str = setting("")  # wandb run name; '': out_dir's name
    tensorboard_log: bool = setting(False)  # write TensorBoard events to out_dir/tb (needs the tensorboard package)
    # --- faults
    spike_factor: float = setting(0.0, ge=0)  # skip an update whose loss exceeds this times the running mean (0: only NaN/inf are skipped)
    max_bad_steps: int = setting(5, ge=1)  # stop after this many skipped updates in a row
    # --- devices and processes
    device: str = setting("auto", pattern=DEVICE_PATTERN)  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'mps'
    dtype: str = setting("auto", choices=DTYPES)  # 'auto' (bf16 where supported, else fp16 on GPU, fp32 on CPU), 'bfloat16', 'float16', 'float32'
    compile: bool = setting(True)  # torch.compile the model (switched off where Triton is unavailable)
    fp8_head: bool = setting(False)  # the training loss's head matmuls in FP8 (record #19, torch._scaled_mm): GPUs with FP8 tensor cores only (compute capability 8.9+: RTX 40xx, L4, H100)
    cpu_threads: int = setting(0, ge=0, le=MAX_CPU_THREADS)  # threads torch uses on CPU (torch.set_num_threads); 0: torch's default, one per core
    backend: str = setting("", choices=["", "nccl", "gloo"])  # torch.distributed backend under torchrun; '': nccl on GPU, gloo on CPU
    dist_timeout_min: int = setting(30, ge=1)  # torchrun: minutes a rank waits for the others (a long eval or checkpoint) before failing

    def no_effect(self, world=1):
        """Settings this run ignores, setting -> why (settings.no_effect_notes logs those given a value)."""
        out = {}
        if world == 1:
            out.update(dict.fromkeys(("sharding", "backend", "dist_timeout_min"), "this run is one process; it applies "
                                     "under torchrun (torchrun --nproc_per_node=N train.py ...)"))
        if self.optimizer != "muon":
            out.update(dict.fromkeys(("muon_lr", "muon_momentum", "muon_momentum_warmup", "muon_weight_decay"),
                                     "optimizer='adamw' has no Muon (--optimizer=muon)"))
        if not (self.value_embeds or self.bigram_embeds):
            out.update(dict.fromkeys(("table_lr", "table_dtype"), "the model has no value-embedding or bigram tables"))
        out["decay_frac" if self.lr_schedule == "cosine" else "lr_decay_iters"] = \
            f"lr_schedule={self.lr_schedule!r} does not read it"
        if not self.hellaswag_interval:
            out.update(dict.fromkeys(("hellaswag_path", "hellaswag_limit"), "hellaswag_interval=0 runs no HellaSwag"))
        if not self.humaneval_interval:
            out["humaneval_path"] = "humaneval_interval=0 runs no HumanEval"
        if not self.wandb_log:
            out.update(dict.fromkeys(("wandb_project", "wandb_run_name"), "wandb_log=False"))
        if self.sharding != "fsdp" or world == 1:
            out["fsdp_dtype"] = "only sharding='fsdp' under torchrun gathers weights"
        if self.pos_emb != "rope":
            out["rope_base"] = f"pos_emb={self.pos_emb!r} has no rotary angles"
        if not self.doc_mask:
            out["eot_token"] = "only doc_mask reads it (documents start at it)"
        if self.init_from == "resume":
            out["overwrite"] = "a resume replaces only what its own run wrote"
        return out

    def _schedule_problems(self):
        """The batch-size, sequence-length, MTP and untie schedules against the sizes they cut."""
        out, micro = [], self.batch_size * self.block_size
        bad = [t for t in self.batch_schedule if t < 1 or t % micro]
        if bad:
            out.append(f"batch_schedule holds {bad[0]}, not a whole number of micro-batches of batch_size x block_size "
                       f"= {micro}; use multiples of {micro}")
        bad = [n for n in self.seq_schedule if n < 1 or self.block_size % n]
        if bad:
            out.append(f"seq_schedule holds {bad[0]}, which does not divide block_size={self.block_size} into rows; use "
                       f"divisors of {self.block_size}")
        if [w for w in self.mtp if not 0 <= w <= 1]:
            out.append(f"mtp={self.mtp} holds a weight outside [0, 1]; the record's is 0.5,0.25")
        if self.untie_at and self.tie_weights:
            out.append("untie_at unties a head from the token embedding, but tie_weights=True ties them for good; set "
                       "--tie_weights=False (the modern recipe's), or --untie_at=0")
        if self.untie_at and self.sharding != "none":
            out.append(f"untie_at adds the head's own weights to the optimizer mid-run, which sharding={self.sharding!r} "
                       f"splits across ranks; use --sharding=none with untie_at")
        return out

    def problems(self):
        model = {f.name: getattr(self, f.name) for f in fields(GPTConfig)}
        model["zero_init"] &= self.init_from == "scratch"  # it shapes new weights only: a loaded model is past it
        out = GPTConfig(**model).problems()
        if self.init_from not in INIT_FROM and not self.init_from.endswith(".pt"):
            out.append(f"init_from must be one of {', '.join(map(repr, INIT_FROM))} or the path of a checkpoint "
                       f"file (.pt), got {self.init_from!r}")
        if self.min_lr > self.learning_rate:
            out.append(f"min_lr={self.min_lr:g} is above learning_rate={self.learning_rate:g}; the schedule decays "
                       f"from learning_rate down to min_lr, so lower min_lr")
        if self.eval_batch_size > self.batch_size:
            out.append(f"eval_batch_size={self.eval_batch_size} is larger than batch_size={self.batch_size}; eval must "
                       f"fit where training fits, so lower eval_batch_size (0: batch_size)")
        if 0 < self.spike_factor <= 1:
            out.append(f"spike_factor={self.spike_factor:g} would skip ordinary steps (a loss above its running "
                       f"mean is normal); use a factor above 1, e.g. 3, or 0 (off)")
        if self.lr_schedule == "cosine" and self.warmup_iters > (self.lr_decay_iters or self.max_iters):
            out.append(f"warmup_iters={self.warmup_iters} is longer than the cosine schedule ("
                       + (f"lr_decay_iters={self.lr_decay_iters}" if self.lr_decay_iters else f"max_iters={self.max_iters}")
                       + "): the rate would never reach learning_rate; lower warmup_iters")
        if self.lr_schedule == "wsd" and self.warmup_iters > decay_start(self):
            out.append(f"warmup_iters={self.warmup_iters} runs into the decay, which starts at iter {decay_start(self)} "
                       f"(wsd, decay_frac={self.decay_frac:g}); lower warmup_iters or decay_frac")
        if self.window_start and not self.attn_window:
            out.append(f"window_start={self.window_start} grows the attention window, but attn_window=0 (every earlier "
                       f"token is seen); set --attn_window (e.g. the record's 1792), or --window_start=0")
        elif self.window_start > self.attn_window:
            out.append(f"window_start={self.window_start} is above attn_window={self.attn_window}, the window it grows "
                       f"to; lower window_start")
        if self.muon_states != "fp32" and self.optimizer != "muon":
            out.append(f"muon_states={self.muon_states!r} shapes Muon's momentum, but optimizer='adamw' has none; use "
                       f"--optimizer=muon, or --adamw_states=8bit for AdamW's")
        if self.sharding == "fsdp" and self.optimizer == "muon":
            out.append("sharding='fsdp' keeps a slice of each matrix on every rank, but Muon orthogonalises whole "
                       "matrices; use --sharding=optimizer (each matrix's state whole on one rank), or --optimizer=adamw")
        if self.sharding == "fsdp" and (self.hellaswag_interval or self.humaneval_interval):
            out.append("sharding='fsdp' needs every rank to run the same forward passes, which HellaSwag and HumanEval "
                       "during training do not; set --hellaswag_interval=0 --humaneval_interval=0 and run eval.py on "
                       "the checkpoints")
        if self.fp8_head and (self.n_embd % 16 or self.vocab_size % 16 or (self.batch_size * self.block_size) % 16):
            out.append(f"fp8_head multiplies in tiles of 16: n_embd={self.n_embd}, vocab_size={self.vocab_size} and "
                       f"batch_size x block_size={self.batch_size * self.block_size} must each be a multiple of 16; "
                       f"use --fp8_head=False")
        out += self._schedule_problems()
        if self.table_dtype != "fp32" and self.sharding == "fsdp":
            out.append(f"table_dtype={self.table_dtype!r} mixes dtypes in the unit FSDP2 gathers as one (it needs one "
                       f"dtype); use --table_dtype=fp32 with --sharding=fsdp, or --sharding=optimizer")
        if self.resume_from and self.init_from != "resume":  # it would start from scratch, which it never means
            out.append(f"resume_from={self.resume_from!r} names the checkpoint a resume continues, but init_from="
                       f"{self.init_from!r}; continue from it with --init_from=resume")
        if not self.val_sets:
            out.append("val_sets is empty; give at least one validation split, e.g. --val_sets=val")
        if self.humaneval_interval and not self.humaneval_path:
            out.append("humaneval_interval needs humaneval_path=.../HumanEval.jsonl.gz")
        return out
