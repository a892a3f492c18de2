"""Optimizers and learning-rate schedules, the one place train.py and bench.py get them from.

    make_optimizer(model, cfg, device)   AdamW alone ('adamw'), or Muon + AdamW ('muon'), as one Optimizers
    lr_at(it, cfg)                       the peak-relative schedule: cosine (GPT-3) or warmup-stable-decay
    window_at(it, cfg)                   the attention window of an iteration (its warmup: record #13)
    set_lr(optimizer, it, cfg)           apply the schedule (and Muon's momentum warmup) to every group
    checkpoint_bytes(model, cfg)         the size of one training checkpoint
Schedules are pure functions of the iteration and the current settings, so a resumed run needs no
schedule state and a run extended with a larger max_iters recomputes its schedule.
"""
import inspect
import math

import torch

MUON_MOMENTUM_START = 0.85  # Muon's momentum at iteration 0, rising to muon_momentum (modded-nanogpt)
STATE_FLOATS = {"adamw": 2, "muon": 1}  # fp32 tensors each optimizer keeps per parameter (moments; momentum)


class Optimizers:
    """One or two torch optimizers used as one: AdamW, or Muon for the hidden matrices + AdamW for the rest.
    A GradScaler unscales and steps each of them (PyTorch's recipe for several optimizers)."""

    def __init__(self, parts):
        self.parts = parts  # name -> torch.optim.Optimizer

    @property
    def param_groups(self):
        return [g for opt in self.parts.values() for g in opt.param_groups]

    def unscale_(self, scaler):
        for opt in self.parts.values():
            scaler.unscale_(opt)

    def step(self, scaler):
        for opt in self.parts.values():
            scaler.step(opt)

    def zero_grad(self, set_to_none=True):
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state):
        """Raises ValueError when the state is another optimizer's (a plain AdamW state is a version 1 one)."""
        if "state" in state and "param_groups" in state:
            state = {"adamw": state}
        if set(state) != set(self.parts):
            raise ValueError(f"it holds {' + '.join(sorted(state))}, the settings make {' + '.join(sorted(self.parts))}")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])

    @property
    def state(self):
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}


class CPUMuon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz orthogonalisation in fp32 instead of bf16, for CPUs: torch's casts
    every update to bf16, and a CPU without bf16 matrix units emulates those products (a 256 x 768 by 768 x 256
    product: 69 ms in bf16 against 1.1 ms in fp32, 2-core AMD EPYC, torch 2.13), which made Muon's step 80% of a
    4 x 256 model's training step. Same state (momentum_buffer), so checkpoints move between CPU and GPU."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            momentum, lr = group["momentum"], group["lr"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - momentum)
                update = g.lerp(buf, momentum) if group["nesterov"] else buf
                update = _orthogonalise(update.float(), group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))  # Muon's shape scale


def _orthogonalise(x, coefficients, steps, eps):
    """The quintic Newton-Schulz iteration of torch.optim.Muon (Jordan et al. 2024), in x's dtype: x (m, n) ->
    about U V^T of its SVD."""
    a, b, c = coefficients
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def muon_params(model):
    """The 2-D weight matrices inside the transformer blocks: what Muon orthogonalises. Embeddings, the head,
    norm gains and biases are not hidden matrices (Jordan et al. 2024) and stay with AdamW."""
    return [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]


def table_params(model):
    """The value-embedding and bigram tables: they start at std 1 (the records' init), 50x the token embedding's
    0.02, so AdamW's steps of the same size would move them 50x less (table_lr)."""
    t = model.transformer
    return [p for name in ("vte", "bte") if name in t for p in t[name].parameters() if p.requires_grad]


def table_lr(cfg):
    """The tables' peak AdamW rate: table_lr, or learning_rate scaled by their init std over the token embedding's
    (model.INIT_STD), so each table moves as fast relative to its size as the token embedding does."""
    from model import INIT_STD
    return cfg.table_lr or cfg.learning_rate / INIT_STD


def make_optimizer(model, cfg, device):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matmul and embedding weights (dim >= 2), not on
    biases and norm gains, fused on CUDA; with optimizer='muon', torch.optim.Muon for the hidden matrices."""
    hidden = {id(p) for p in muon_params(model)} if cfg.optimizer == "muon" else set()
    tables = table_params(model)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden | {id(t) for t in tables}]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "kind": "adamw"},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "kind": "adamw"},
              {"params": tables, "weight_decay": 0.0, "kind": "tables"}]  # only when the model has them
    fused = device.startswith("cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    parts = {"adamw": torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                                        betas=(cfg.beta1, cfg.beta2), **({"fused": True} if fused else {}))}
    if hidden:
        muon = CPUMuon if device.startswith("cpu") else torch.optim.Muon
        parts["muon"] = muon([{"params": muon_params(model), "kind": "muon"}], lr=cfg.muon_lr,
                             momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay)
    return Optimizers(parts)


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
    attention-window warmup: 128 -> 1792 in steps of 128). Short ('S') blocks use half. A pure function of the
    iteration and the settings, like lr_at, so a resumed run continues on exactly the same windows."""
    if not cfg.window_start or not cfg.attn_window:
        return cfg.attn_window
    frac = min(it, cfg.max_iters) / cfg.max_iters
    grown = cfg.window_start + frac * (cfg.attn_window - cfg.window_start)
    return min(cfg.attn_window, cfg.window_start * math.ceil(grown / cfg.window_start))


def set_lr(optimizer, it, cfg):
    """Set every group's learning rate (and Muon's momentum) for iteration `it`; returns AdamW's rate.
    The peaks come from the settings, never from a loaded state, so a resume may change them."""
    lr = lr_at(it, cfg)
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            group["lr"] = cfg.muon_lr * lr / cfg.learning_rate
            group["momentum"] = muon_momentum_at(it, cfg)
        elif group.get("kind") == "tables":
            group["lr"] = table_lr(cfg) * lr / cfg.learning_rate
        else:
            group["lr"] = lr
    return lr


def checkpoint_bytes(model, cfg):
    """One training checkpoint: fp32 weights plus the optimizers' fp32 state."""
    n = model.get_num_params()
    n_muon = sum(p.numel() for p in muon_params(model)) if cfg.optimizer == "muon" else 0
    return 4 * (n + STATE_FLOATS["adamw"] * (n - n_muon) + STATE_FLOATS["muon"] * n_muon)


def fit_state_to_params(optimizer):
    """After a resume with a smaller block_size the position embedding was cropped: crop its optimizer
    state the same way (rows beyond the new block_size are never used again)."""
    for p, state in optimizer.state.items():
        for k, t in state.items():
            if torch.is_tensor(t) and t.dim() == p.dim() and t.dim() >= 1 and t.shape != p.shape \
                    and t.shape[1:] == p.shape[1:] and t.shape[0] > p.shape[0]:
                state[k] = t[:p.shape[0]].clone()


def load_foreign_state(optimizer, state):
    """Load another run's AdamW state (nanoGPT's: one AdamW, the same two groups and parameter order) into an
    AdamW-only Optimizers, keeping this optimizer's own group options (fused, foreach, ...). None when loaded,
    else why it was not (the optimizer then starts afresh)."""
    if not state:
        return "the checkpoint holds none"
    adamw = state.get("adamw", state)
    if set(optimizer.parts) != {"adamw"} or "state" not in adamw or "param_groups" not in adamw:
        return f"it holds {' + '.join(sorted(state))}, this run uses {' + '.join(sorted(optimizer.parts))}"
    mine = optimizer.parts["adamw"]
    groups = mine.state_dict()["param_groups"]
    if [len(g["params"]) for g in adamw["param_groups"]] != [len(g["params"]) for g in groups]:
        return "its parameter groups differ from this model's"
    params = [p for g in mine.param_groups for p in g["params"]]
    ids = [i for g in adamw["param_groups"] for i in g["params"]]
    for p, i in zip(params, ids):
        for k, t in adamw["state"].get(i, {}).items():
            if torch.is_tensor(t) and t.dim() and t.shape != p.shape:
                return f"a moment has shape {tuple(t.shape)} where the parameter has {tuple(p.shape)}"
    mine.load_state_dict({"state": adamw["state"],
                          "param_groups": [{**g, "params": s["params"]} for g, s in zip(groups, adamw["param_groups"])]})
    return None
