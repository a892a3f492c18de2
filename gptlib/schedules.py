"""What changes over a run, each a pure function of the iteration and the settings (nothing to save, nothing to
restore: a resumed run recomputes exactly the values an unbroken one would have had, and an extended run
recomputes its schedule from the new settings).

    at(it, cfg)                 this iteration's values, as one StepValues: the loop asks once per step
    lr_at(it, cfg)              the learning rate: cosine (GPT-3) or warmup-stable-decay
    decay_start(cfg)            wsd: where the decay begins (ckpt_predecay.pt is written there)
    muon_momentum_at(it, cfg)   Muon's momentum warmup (modded-nanogpt)
    window_at(it, cfg)          the attention window's warmup (modded-nanogpt record #13)

The loop hands these values to the optimizer (optim.apply_schedule) and to the model's forward (window):
no module keeps a schedule's state.
"""
import math
from dataclasses import dataclass

MUON_MOMENTUM_START = 0.85  # Muon's momentum at iteration 0, rising to muon_momentum (modded-nanogpt)


@dataclass(frozen=True)
class StepValues:
    """The scheduled values of one iteration."""
    lr: float  # AdamW's learning rate (Muon's and the tables' follow it in proportion: optim.apply_schedule)
    muon_momentum: float  # Muon's momentum
    window: int  # the long attention window (short 'S' blocks use half); 0: no window


def at(it, cfg):
    """The values of iteration `it` under the settings cfg."""
    return StepValues(lr=lr_at(it, cfg), muon_momentum=muon_momentum_at(it, cfg), window=window_at(it, cfg))


def decay_start(cfg):
    """wsd: the iteration where the linear decay to min_lr begins."""
    return cfg.max_iters - max(1, round(cfg.decay_frac * cfg.max_iters))


def lr_at(it, cfg):
    """The learning rate of iteration `it` (AdamW's; Muon's is muon_lr times the same ratio).
    cosine: linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters (GPT-3 paper, app. B).
    wsd: linear warmup, constant, then linear decay to min_lr over the last decay_frac of max_iters
    (warmup-stable-decay; Hu et al. 2024, MiniCPM; Hagele et al. 2024)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if cfg.lr_schedule == "wsd":
        start = decay_start(cfg)
        if it < start:
            return cfg.learning_rate
        frac = min(1.0, (it - start) / max(1, cfg.max_iters - start))
        return cfg.learning_rate + frac * (cfg.min_lr - cfg.learning_rate)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def muon_momentum_at(it, cfg):
    """Muon's momentum rises linearly from 0.85 over muon_momentum_warmup iterations (modded-nanogpt)."""
    frac = min(1.0, it / cfg.muon_momentum_warmup) if cfg.muon_momentum_warmup else 1.0
    return MUON_MOMENTUM_START + frac * (cfg.muon_momentum - MUON_MOMENTUM_START)


def window_at(it, cfg):
    """The long attention window of iteration `it`: attn_window, or with window_start it grows linearly from
    window_start at iteration 0 to attn_window at max_iters, in multiples of window_start (record #13, the
    attention-window warmup: 128 -> 1792 in steps of 128). Short ('S') blocks use half."""
    if not cfg.window_start or not cfg.attn_window:
        return cfg.attn_window
    frac = min(it, cfg.max_iters) / cfg.max_iters
    grown = cfg.window_start + frac * (cfg.attn_window - cfg.window_start)
    return min(cfg.attn_window, cfg.window_start * math.ceil(grown / cfg.window_start))
