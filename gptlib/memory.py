"""What a training step holds in memory, by part, under the memory options: the arithmetic of train.py --plan
and of its fit check (issue 27). Measured against on CPU by benchmarks/bench_memory.py (ckpt-* cases).

    weights      4 bytes a parameter (fp32 master weights, the tables 2 with table_dtype=bf16; autocast makes bf16
                 copies per matmul, counted below)
    gradients    4 bytes a parameter
    optimizer    AdamW 8 bytes a parameter (two fp32 moments; ~2 in 8 bits, ~1 in 4), Muon 4 (one momentum; 2 in
                 bf16), a 1/world share of them under sharding: optim.state_bytes
    activations  what the forward pass keeps for the backward, per token and block (activation_bytes), and the
                 chunked head+loss's working set on top of it at the end of the forward pass (head_bytes)
"""
import dataclasses

from . import head_loss, monitor, optim
from .errors import ConfigError

# Values kept per token by one block, in units of n_embd, counted from model.Block's forward (GPT-2 shape, MLP 4x):
# the residual stream into each norm (2, kept in fp32 under autocast), the norms' outputs (2), q, k, v (3), the
# attention's output and its copy into the projection (2), the MLP's hidden layer before and after the activation
# (8). 17 in all, as Korthikanti et al. 2022 count (34 bytes at 16 bits, without dropout masks and with
# flash attention's O(T) memory).
BLOCK_VALUES = {"none": 17, "selective": 10, "full": 0}  # selective keeps the matmul and attention outputs only
RESIDUAL_VALUES = 2  # of the 17, the fp32 residual stream (norm inputs)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_bytes(config, batch_size, block_size, checkpointing, dtype, compiled=False):
    """Bytes of activations at a training step's peak: per block what `checkpointing` keeps for the backward (the
    block inputs it keeps instead in fp32), and on top of it the larger of the two working sets that never coexist:
    the chunked head+loss's at the end of the forward pass (head_bytes; it keeps no logits, gptlib/head_loss.py)
    and, with checkpointing, one block's whole set recomputed in the backward pass, after the head's is freed.
    Checked against bench_memory's ckpt-* cases: within +4/-1/-2% (none/selective/full) at 12 x 512 on CPU."""
    tokens, C, L = batch_size * block_size, config.n_embd, config.n_layer
    b = DTYPE_BYTES[dtype]

    def block(values):  # bytes of `values` n_embd-wide tensors per token, the residual part in fp32
        kept_fp32 = min(values, RESIDUAL_VALUES)
        return tokens * C * (4 * kept_fp32 + b * (values - kept_fp32))
    head = head_bytes(config, batch_size, block_size, dtype, compiled)
    if checkpointing == "none":
        return L * block(BLOCK_VALUES["none"]) + tokens * C * 4 + head  # + the final norm's input
    inputs = tokens * C * 4  # each block's input, fp32
    return L * (inputs + block(BLOCK_VALUES[checkpointing])) + max(head, block(BLOCK_VALUES["none"]))


def head_bytes(config, batch_size, block_size, dtype, compiled=False):
    """The chunked head+loss (gptlib/head_loss.py) at its peak: one chunk's logits, then eager its fp32 softmax rows
    (the gradient overwrites the logits), compiled the gradient's own buffer of the chunk's size; the head weight
    cast to the compute dtype once, and the gradients it computes in the forward pass (of the weight in fp32, and of
    its input). Compiled bf16 on CPU (8 x 256, B 8 x 256): the head is ~130 MB more than eager's count."""
    rows, V, C, b = batch_size * block_size, config.vocab_size, config.n_embd, DTYPE_BYTES[dtype]
    chunk = min(rows, head_loss.LOSS_CHUNK) * V * b
    softmax = chunk if compiled else min(rows, head_loss.SOFTMAX_ROWS) * V * 4
    return chunk + softmax + V * C * (4 + (b if b != 4 else 0)) + rows * C * 4


def mask_bytes(config, batch_size, block_size, flex=True):
    """The attention masks of one forward with document masks or windows (0 without): per window kind a
    FlexAttention BlockMask from 128-token block bounds (a few (B, nb, nb) tensors: small), or on the dense path
    (CPU, no Triton, training with dropout) a (B, T, T) bool kept for the backward, plus the (T, T) bool temporaries
    that make it. Before issue 36 the BlockMask was made from all T x T positions: ~1 GB of int64 at 8,192."""
    if not (config.doc_mask or config.attn_window):
        return 0
    kinds, T = len(set(config.windows())) if config.attn_window else 1, block_size
    if flex:
        nb = -(-T // 128)
        return kinds * batch_size * nb * nb * 16  # counts, indices, full counts and indices (int32)
    return kinds * batch_size * T * T + 3 * T * T


def eval_bytes(model, cfg, dtype, flex=True):
    """An eval batch's bytes beside the weights and optimizer states (gradients are freed by then): the residual
    stream and one block's values at a time (no_grad keeps nothing for a backward), the head's chunk without its
    gradients, and the masks: what train.py's evals add at eval_batch_size (bench.py checks it in its fit)."""
    c, B = model.config, cfg.eval_batch_size or cfg.batch_size
    tokens, b = B * cfg.block_size, DTYPE_BYTES[dtype]
    rows = min(tokens, head_loss.LOSS_CHUNK)
    head = rows * c.vocab_size * b + min(rows, head_loss.SOFTMAX_ROWS) * c.vocab_size * 4
    return tokens * c.n_embd * (4 + b * BLOCK_VALUES["none"]) + head + mask_bytes(c, B, cfg.block_size, flex)


def step_bytes(model, cfg, dtype, world=1, flex=True):
    """{part: bytes} of a training step on one of `world` ranks at cfg's micro-batch and options, and 'total'.
    sharding='fsdp' keeps 1/world of the weights and gradients, plus what FSDP2 gathers whole: the model's own
    parameters outside the blocks (the root module's: embeddings, head, final norm) for the whole step, and two
    blocks' (the one computing, the next one prefetched) with their gradients before the reduce-scatter."""
    n, B, T = model.get_num_params(), cfg.batch_size, cfg.block_size
    weights = gradients = optim.weight_bytes(model, cfg)  # fp32, the tables in table_dtype
    if cfg.sharding == "fsdp" and world > 1:
        block = max(sum(p.numel() for p in b.parameters()) for b in model.transformer.h)
        root = n - sum(p.numel() for b in model.transformer.h for p in b.parameters())
        gathered = 2 if cfg.fsdp_dtype == "bf16" else 4  # bytes of a gathered weight (and of its unreduced gradient)
        weights = 4 * n / world + gathered * (root + 2 * block)
        gradients = 4 * n / world + gathered * (root + block)
    parts = {"weights": weights, "gradients": gradients, "optimizer": optim.state_bytes(model, cfg, world),
             "activations": activation_bytes(model.config, B, T, cfg.activation_checkpointing, dtype, cfg.compile)
             + mask_bytes(model.config, B, T, flex)}
    parts["total"] = sum(parts.values())
    return parts


GIB = 2**30
FIT_MARGIN = 0.10  # share of the card kept free for the CUDA context, fragmentation and other processes (bench.py's default)
OPTION_NAMES = ("activation_checkpointing", "adamw_states", "muon_states", "sharding", "batch_size")


def plan_lines(model, cfg, dtype, world=1):
    """train.py --plan's memory lines: each part at the run's micro-batch, and against cfg.memory_gib (if given)
    whether it fits, or the cheapest options that make it fit."""
    parts = step_bytes(model, cfg, dtype, world)
    states = f"adamw_states={cfg.adamw_states}" + (f", muon_states={cfg.muon_states}" if cfg.optimizer == "muon" else "")
    shard = f", sharding={cfg.sharding} over {world} GPUs" if cfg.sharding != "none" and world > 1 else ""
    lines = [f"memory per GPU at micro-batch {cfg.batch_size} x {cfg.block_size} ({dtype}, activation_checkpointing="
             f"{cfg.activation_checkpointing}, {states}{shard}): weights {parts['weights'] / GIB:.2f} + gradients "
             f"{parts['gradients'] / GIB:.2f} + optimizer {parts['optimizer'] / GIB:.2f} + activations "
             f"{parts['activations'] / GIB:.2f} = {parts['total'] / GIB:.2f} GiB (arithmetic: gptlib/memory.py)"]
    evals = parts["weights"] + parts["optimizer"] + eval_bytes(model, cfg, dtype)
    lines.append(f"an eval batch of {cfg.eval_batch_size or cfg.batch_size} x {cfg.block_size} between steps: weights "
                 f"and optimizer + {eval_bytes(model, cfg, dtype) / GIB:.2f} GiB (masks included) = {evals / GIB:.2f} "
                 f"GiB, {'under' if evals <= parts['total'] else 'OVER'} the step's")
    if cfg.sharding != "none" and world == 1:
        lines.append(f"sharding={cfg.sharding}: one process keeps everything whole; under torchrun --nproc_per_node=N "
                     f"each GPU keeps ~1/N (plan with the same torchrun command)")
    if cfg.memory_gib:
        lines.append(fit_line(model, cfg, dtype, parts["total"], world))
    return lines


def check_fits(model, cfg, dtype, world=1):
    """A run given memory_gib that would not fit on such a card stops at its start, not at its first step, in one
    line naming the options that make it fit (issue 27)."""
    need = step_bytes(model, cfg, dtype, world)["total"]
    if cfg.memory_gib and need > (1 - FIT_MARGIN) * cfg.memory_gib * GIB:
        raise ConfigError(fit_line(model, cfg, dtype, need, world))


def fit_options(cfg, world):
    """The option sets to try, least change first: none (checkpointing and micro-batch only: the same run), then
    sharding over the ranks (the same run, more traffic: the states, then with AdamW weights and gradients too),
    then leaner states (8-bit, then 4-bit), each with the sharding before it."""
    lean = [{}] + [{"adamw_states": a, **({"muon_states": "bf16"} if cfg.optimizer == "muon" else {})}
                   for a in ("8bit", "4bit") if ("fp32", "8bit", "4bit").index(a) > ("fp32", "8bit", "4bit").index(cfg.adamw_states)]
    ways = ["none", "optimizer"] + (["fsdp"] if cfg.optimizer == "adamw" else [])  # fsdp: whole matrices for Muon
    shard = [{}] + ([{"sharding": w} for w in ways[ways.index(cfg.sharding) + 1:]] if world > 1 else [])
    return [{**s, **l} for l in lean for s in shard]


def fit_line(model, cfg, dtype, total, world=1):
    """'fits on 12 GiB ...', or what would make it fit (fit_options, each with the least activation checkpointing
    and then the largest micro-batch that divides the total batch), else a smaller model."""
    card = cfg.memory_gib * GIB
    room = (1 - FIT_MARGIN) * card
    if total <= room:
        return f"fits on {cfg.memory_gib:g} GiB ({total / GIB:.2f} GiB planned, {1 - total / card:.0%} to spare)"
    modes = ["none", "selective", "full"]
    for options in fit_options(cfg, world):
        for mode in modes[modes.index(cfg.activation_checkpointing):]:
            for b in range(cfg.batch_size, 0 if mode != "none" else cfg.batch_size - 1, -1):  # checkpointing, then smaller
                if b < cfg.batch_size and cfg.total_batch_size % (b * cfg.block_size * world):
                    continue
                trial = dataclasses.replace(cfg, activation_checkpointing=mode, batch_size=b, **options)
                need = step_bytes(model, trial, dtype, world)["total"]
                if need <= room and not trial.problems():  # never options the settings' own checks refuse
                    fix = " ".join(f"--{k}={getattr(trial, k)}" for k in OPTION_NAMES if getattr(trial, k) != getattr(cfg, k))
                    if b < cfg.batch_size:
                        fix += (f" (gradient accumulation {monitor.grad_accum_steps(cfg.total_batch_size, b, cfg.block_size, world)}"
                                f", the same total batch)")
                    return (f"does not fit on {cfg.memory_gib:g} GiB ({total / GIB:.2f} GiB planned, {FIT_MARGIN:.0%} "
                            f"kept free); fits with {fix}: {need / GIB:.2f} GiB")
    leanest = dataclasses.replace(cfg, activation_checkpointing="full", batch_size=1, **fit_options(cfg, world)[-1])
    parts = step_bytes(model, leanest, dtype, world)
    return (f"does not fit on {cfg.memory_gib:g} GiB (less {FIT_MARGIN:.0%} kept free) even at micro-batch 1 with "
            f"full checkpointing and the leanest optimizer states: weights, gradients and states alone are "
            f"{(parts['total'] - parts['activations']) / GIB:.2f} GiB a GPU; train a smaller model"
            + (", or on more GPUs with torchrun and --sharding=fsdp (AdamW) or --sharding=optimizer" if world == 1 else ""))
