"""What a training step holds in memory, by part, under the memory options: the arithmetic of train.py --plan
and of its fit check (issue 27). Measured against on CPU by benchmarks/bench_memory.py (ckpt-* cases).

    weights      4 bytes a parameter (fp32 master weights; autocast makes bf16 copies per matmul, counted below)
    gradients    4 bytes a parameter
    optimizer    AdamW 8 bytes a parameter (two fp32 moments), Muon 4 (one momentum): optim.STATE_FLOATS
    activations  what the forward pass keeps for the backward, per token and block (activation_bytes), and the
                 chunked head+loss's working set on top of it at the end of the forward pass (head_bytes)
"""
import dataclasses

from . import head_loss, monitor, optim

# Values kept per token by one block, in units of n_embd, counted from model.Block's forward (GPT-2 shape, MLP 4x):
# the residual stream into each norm (2, kept in fp32 under autocast), the norms' outputs (2), q, k, v (3), the
# attention's output and its copy into the projection (2), the MLP's hidden layer before and after the activation
# (8). 17 in all, as Korthikanti et al. 2022 count (34 bytes at 16 bits, without dropout masks and with
# flash attention's O(T) memory).
BLOCK_VALUES = {"none": 17, "selective": 10, "full": 0}  # selective keeps the matmul and attention outputs only
RESIDUAL_VALUES = 2  # of the 17, the fp32 residual stream (norm inputs)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_bytes(config, batch_size, block_size, checkpointing, dtype):
    """Bytes the forward pass of one micro-batch keeps for the backward: per block what `checkpointing` keeps,
    the block inputs checkpointing keeps instead (fp32), and with checkpointing one block's full set, recomputed
    in the backward pass. The chunked head+loss keeps no logits (gptlib/head_loss.py)."""
    tokens, C, L = batch_size * block_size, config.n_embd, config.n_layer
    b = DTYPE_BYTES[dtype]

    def block(values):  # bytes of `values` n_embd-wide tensors per token, the residual part in fp32
        kept_fp32 = min(values, RESIDUAL_VALUES)
        return tokens * C * (4 * kept_fp32 + b * (values - kept_fp32))
    if checkpointing == "none":
        return L * block(BLOCK_VALUES["none"]) + tokens * C * 4  # + the final norm's input
    inputs = tokens * C * 4  # each block's input, fp32
    return L * (inputs + block(BLOCK_VALUES[checkpointing])) + block(BLOCK_VALUES["none"])


def head_bytes(config, batch_size, block_size, dtype):
    """The chunked head+loss (gptlib/head_loss.py) at its peak: one chunk's logits, its fp32 softmax rows, and the
    gradients it computes in the forward pass (of the head weight in fp32, and of its input)."""
    rows, V, C, b = batch_size * block_size, config.vocab_size, config.n_embd, DTYPE_BYTES[dtype]
    return (min(rows, head_loss.LOSS_CHUNK) * V * b + min(rows, head_loss.SOFTMAX_ROWS) * V * 4 + V * C * 4
            + rows * C * 4)


def step_bytes(model, cfg, dtype):
    """{part: bytes} of a training step at cfg's micro-batch and checkpointing, and 'total'."""
    n, B, T = model.get_num_params(), cfg.batch_size, cfg.block_size
    parts = {"weights": 4 * n, "gradients": 4 * n, "optimizer": optim.checkpoint_bytes(model, cfg) - 4 * n,
             "activations": activation_bytes(model.config, B, T, cfg.activation_checkpointing, dtype)
             + head_bytes(model.config, B, T, dtype)}
    parts["total"] = sum(parts.values())
    return parts


GIB = 2**30
FIT_MARGIN = 0.10  # share of the card kept free for the CUDA context, fragmentation and other processes (bench.py's default)


def plan_lines(model, cfg, dtype):
    """train.py --plan's memory lines: each part at the run's micro-batch, and against cfg.memory_gib (if given)
    whether it fits, or the cheapest options that make it fit."""
    parts = step_bytes(model, cfg, dtype)
    lines = [f"memory per GPU at micro-batch {cfg.batch_size} x {cfg.block_size} ({dtype}, activation_checkpointing="
             f"{cfg.activation_checkpointing}): weights {parts['weights'] / GIB:.2f} + gradients "
             f"{parts['gradients'] / GIB:.2f} + optimizer {parts['optimizer'] / GIB:.2f} + activations "
             f"{parts['activations'] / GIB:.2f} = {parts['total'] / GIB:.2f} GiB (arithmetic: gptlib/memory.py)"]
    if cfg.memory_gib:
        lines.append(fit_line(model, cfg, dtype, parts["total"]))
    return lines


def fit_line(model, cfg, dtype, total):
    """'fits on 12 GiB ...', or what would make it fit: checkpointing first (no change to the run), then a smaller
    micro-batch with more accumulation (the same total batch), else a smaller model."""
    card = cfg.memory_gib * GIB
    room = (1 - FIT_MARGIN) * card
    if total <= room:
        return f"fits on {cfg.memory_gib:g} GiB ({total / GIB:.2f} GiB planned, {1 - total / card:.0%} to spare)"
    for mode in ("selective", "full"):
        for b in range(cfg.batch_size, 0, -1):
            if b < cfg.batch_size and cfg.total_batch_size % (b * cfg.block_size):
                continue
            need = step_bytes(model, dataclasses.replace(cfg, activation_checkpointing=mode, batch_size=b), dtype)["total"]
            if need <= room:
                fix = f"--activation_checkpointing={mode}" + (f" --batch_size={b} (gradient accumulation "
                      f"{monitor.grad_accum_steps(cfg.total_batch_size, b, cfg.block_size)}, the same total batch)"
                      if b < cfg.batch_size else "")
                return (f"does not fit on {cfg.memory_gib:g} GiB ({total / GIB:.2f} GiB planned, {FIT_MARGIN:.0%} "
                        f"kept free); fits with {fix}: {need / GIB:.2f} GiB")
    parts = step_bytes(model, cfg, dtype)
    return (f"does not fit on {cfg.memory_gib:g} GiB (less {FIT_MARGIN:.0%} kept free) even at micro-batch 1 with "
            f"full checkpointing: weights, gradients and optimizer states alone are "
            f"{(parts['total'] - parts['activations']) / GIB:.2f} GiB; train a smaller model (8-bit optimizer states "
            f"and sharding across GPUs are not built yet: issue 27)")
