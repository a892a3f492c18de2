"""Optimizers and learning-rate schedules, the one place train.py and bench.py get them from.

    make_optimizer(model, cfg, device)   AdamW, weight decay on matmul/embedding weights only
    lr_at(it, cfg)                       the learning rate of iteration `it`
    set_lr(optimizer, it, cfg)           apply it to every parameter group; returns it
    checkpoint_bytes(n_params, cfg)      the size of one training checkpoint
Schedules are pure functions of the iteration and the current settings, so a resumed run needs no
schedule state and a run extended with a larger max_iters recomputes its schedule.
"""
import inspect
import math

import torch

ADAMW_MOMENTS = 2  # fp32 tensors AdamW keeps per parameter (exp_avg, exp_avg_sq)


def make_optimizer(model, cfg, device):
    """AdamW (Loshchilov & Hutter 2019) with GPT-3's betas; weight decay on matmul and embedding weights
    (dim >= 2), not on biases and norm gains. Fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.startswith("cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **({"fused": True} if fused else {}))


def lr_at(it, cfg):
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters (GPT-3 paper, appendix B).
    Computed from the current settings, so a resumed run with a larger max_iters stretches the schedule."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def set_lr(optimizer, it, cfg):
    lr = lr_at(it, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def checkpoint_bytes(n_params, cfg):
    """One training checkpoint: fp32 weights plus the optimizer's fp32 state."""
    return 4 * n_params * (1 + ADAMW_MOMENTS)


def fit_state_to_params(optimizer):
    """After a resume with a smaller block_size the position embedding was cropped: crop its optimizer
    state the same way (rows beyond the new block_size are never used again)."""
    for p, state in optimizer.state.items():
        for k, t in state.items():
            if torch.is_tensor(t) and t.dim() == p.dim() and t.dim() >= 1 and t.shape != p.shape \
                    and t.shape[1:] == p.shape[1:] and t.shape[0] > p.shape[0]:
                state[k] = t[:p.shape[0]].clone()
