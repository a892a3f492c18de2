"""What changes over a run, each a pure function of the iteration and the settings (nothing to save, nothing to
restore: a resumed run recomputes exactly the values an unbroken one would have had, and an extended run
recomputes its schedule from the new settings).

    at(it, cfg)                 this iteration's values, as one StepValues: the loop asks once per step
    lr_at(it, cfg)              the learning rate's shape: cosine (GPT-3) or warmup-stable-decay
    decay_start(cfg)            wsd: where the decay begins (ckpt_predecay.pt is written there)
    muon_momentum_at(it, cfg)   Muon's momentum warmup (modded-nanogpt)
    window_at(it, cfg)          the attention window's warmup (modded-nanogpt record #13)
    tokens_at(it, cfg)          tokens per step (the batch-size schedule, record #46); tokens_in(a, b, cfg) sums them
    seq_len_at(it, cfg)         the row length (the sequence-length schedule, record #89)
    mtp_at(it, cfg)             the weights of predicting 1, 2, ... tokens ahead (multi-token prediction, record #53)
    tied_at(it, cfg)            whether the head still shares the token embedding (the late untie, record #53)

The batch-size, sequence-length and MTP schedules step through equal parts of the run (modded-nanogpt's thirds).
The loop hands these values to the optimizer (optim.apply_schedule), the step (tokens, row length) and the
model's forward (window, MTP weights): no module keeps a schedule's state.
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
    tokens: int = 0  # tokens of the step: the micro-steps follow (tokens / (batch_size x block_size x GPUs))
    seq_len: int = 0  # row length: a micro-batch of block_size rows is read as rows of this many tokens
    mtp: tuple = (1.0,)  # weight of the loss of predicting 1, 2, ... tokens ahead
    tied: bool = False  # the head shares the token embedding's weights


def at(it, cfg):
    """The values of iteration `it` under the settings cfg."""
    return StepValues(lr=lr_at(it, cfg) * batch_lr_factor(it, cfg), muon_momentum=muon_momentum_at(it, cfg),
                      window=window_at(it, cfg), tokens=tokens_at(it, cfg), seq_len=seq_len_at(it, cfg),
                      mtp=mtp_at(it, cfg), tied=tied_at(it, cfg))


def part(it, cfg, n):
    """Which of n equal parts of the run iteration `it` is in (the last one past max_iters: an extension)."""
    return min(n - 1, it * n // cfg.max_iters)


def tokens_at(it, cfg):
    """Tokens of iteration `it`'s step: batch_schedule's part, else total_batch_size."""
    return cfg.batch_schedule[part(it, cfg, len(cfg.batch_schedule))] if cfg.batch_schedule else cfg.total_batch_size


def tokens_in(a, b, cfg):
    """Tokens of the steps a .. b-1 (the plan's and the ETA's count: a batch schedule's real tokens)."""
    if not cfg.batch_schedule:
        return max(0, b - a) * cfg.total_batch_size
    n, total = len(cfg.batch_schedule), 0
    for k, tokens in enumerate(cfg.batch_schedule):  # part k holds the iterations whose part() is k
        lo = -(-k * cfg.max_iters // n) if k else 0
        hi = -(-(k + 1) * cfg.max_iters // n) if k < n - 1 else max(b, cfg.max_iters)
        total += tokens * max(0, min(b, hi) - max(a, lo))
    return total


def batch_lr_factor(it, cfg):
    """With a batch schedule, the learning rates follow the batch: (this part's tokens / total_batch_size, the batch
    they were tuned at)^batch_lr_power (record #46: 0.6 from its first part up; a larger batch averages more noise
    away and takes a larger step)."""
    return (tokens_at(it, cfg) / cfg.total_batch_size) ** cfg.batch_lr_power if cfg.batch_schedule else 1.0


def seq_len_at(it, cfg):
    """The row length of iteration `it`: seq_schedule's part, else block_size."""
    return cfg.seq_schedule[part(it, cfg, len(cfg.seq_schedule))] if cfg.seq_schedule else cfg.block_size


def mtp_at(it, cfg):
    """(1, w2, w3, ...): the loss weights of the next token and of the tokens after it. mtp lists the extra ones'
    starting weights; with k of them the run is k + 1 equal parts, and the one j tokens further on keeps its weight
    until part k - j and decays linearly to 0 over the next (record #53: [0.5, 0.25] is [1, 0.5, 0.25 -> 0] ->
    [1, 0.5 -> 0] -> [1] by thirds). Trailing zeros are dropped (the next-token loss alone past them)."""
    k, frac = len(cfg.mtp), min(it, cfg.max_iters) / cfg.max_iters
    weights = [1.0]
    for j, w in enumerate(cfg.mtp, 1):
        start, end = (k - j) / (k + 1), (k - j + 1) / (k + 1)
        weights.append(w * min(1.0, max(0.0, (end - frac) / (end - start))))
    while len(weights) > 1 and weights[-1] == 0:
        weights.pop()
    return tuple(weights)


def untie_iter(cfg):
    """The iteration where a late-untied head stops sharing the token embedding (0: never tied)."""
    return round(cfg.untie_at * cfg.max_iters)


def tied_at(it, cfg):
    return bool(cfg.untie_at) and it < untie_iter(cfg)


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
