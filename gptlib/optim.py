"""Optimizers, the one place train.py and bench.py get them from.

    make_optimizer(model, cfg, device)   AdamW alone ('adamw'), or Muon + AdamW ('muon'), as one Optimizers; their
                                         states in fp32 or lean (adamw_states, muon_states), whole or sharded
                                         across ranks (sharding)
    apply_schedule(optimizer, values, cfg)  an iteration's scheduled values (gptlib/schedules.py) into every group
    state_bytes(model, cfg, world)       the optimizer states' bytes on one rank
    checkpoint_bytes(model, cfg)         the size of one training checkpoint
"""
import importlib
import importlib.util
import inspect
import logging
import math
import warnings

import torch

from . import schedules
from .errors import ConfigError

# AdamW's two moments: fp32, or torchao's block-quantized states (Dettmers et al. 2022 for 8-bit; Li et al. 2023
# for 4-bit), (class, values per block, bits a value). torchao keeps a tensor under 4,096 values, or one that is no
# whole number of blocks, in fp32 (as bitsandbytes does); each block adds one fp32 scale.
TORCHAO_ADAMW = {"8bit": ("AdamW8bit", 256, 8), "4bit": ("AdamW4bit", 128, 4)}
TORCHAO_MIN_VALUES = 4096
MUON_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # Muon's momentum buffer (muon_states)


class Optimizers:
    """One or two torch optimizers used as one: AdamW, or Muon for the hidden matrices + AdamW for the rest.
    A GradScaler unscales and steps each of them (PyTorch's recipe for several optimizers). Under
    sharding='optimizer' each part is a ZeroRedundancyOptimizer: every rank keeps the states of its share of the
    parameters; sharded either way, state_dict() is a collective that gives rank 0 the whole state, as one process's."""

    def __init__(self, parts, sharded_model=None):
        self.parts = parts  # name -> torch.optim.Optimizer
        self.sharded_model = sharded_model  # sharding='fsdp': the model whose parameters are DTensor slices

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

    def describe(self):
        """'AdamW8bit + Muon (bf16 momentum), states sharded over 2 ranks (ZeRO-1)': what was built."""
        kinds = []
        for opt in self.parts.values():
            local = _local(opt)
            dtype = getattr(local, "momentum_dtype", None)
            kinds.append(type(local).__name__ + (f" ({str(dtype).removeprefix('torch.')} momentum)" if dtype else ""))
        sharded = any(_local(opt) is not opt for opt in self.parts.values())
        return " + ".join(kinds) + (f", states sharded over {_world()} ranks (ZeRO-1)" if sharded else
                                    f", weights, gradients and states sharded over {_world()} ranks (FSDP2)"
                                    if self.sharded_model is not None else "")

    def state_dict(self):
        """The whole state, quantized states as plain tensors (their codes and scales as they are), so a checkpoint
        loads with weights_only=True and without torchao (sample.py, eval.py, export.py never need it).
        Sharded, a collective (call it on every rank): rank 0 gets the whole state, the others {}."""
        return {name: {**sd, "state": {i: {k: _plain(v) for k, v in s.items()} for i, s in sd["state"].items()}}
                for name, opt in self.parts.items() for sd in [self._whole(opt)] if sd}

    def _whole(self, opt):
        if self.sharded_model is not None:  # FSDP2: each state a DTensor slice
            from .runtime import whole_on_rank0
            return whole_on_rank0(self.sharded_model, opt.state_dict)
        if hasattr(opt, "consolidate_state_dict"):  # ZeRO-1: each state on one rank
            opt.consolidate_state_dict(to=0)
            return opt.state_dict() if torch.distributed.get_rank() == 0 else {}
        return opt.state_dict()

    def load_state_dict(self, state):
        """Raises ValueError when the state is another optimizer's (a plain AdamW state is a version 1 one).
        States saved in another precision are converted to this optimizer's (a resume on a smaller card)."""
        if "state" in state and "param_groups" in state:
            state = {"adamw": state}
        if set(state) != set(self.parts):
            raise ValueError(f"it holds {' + '.join(sorted(state))}, the settings make {' + '.join(sorted(self.parts))}")
        for name, opt in self.parts.items():
            # FSDP2 slices whole fp32 states itself (torch cannot split a quantized one): quantized again below
            quantized = _quantizes(opt) and self.sharded_model is None
            saved = {i: {k: _unplain(v, quantized) for k, v in s.items()} for i, s in state[name]["state"].items()}
            if self.sharded_model is None or not saved:  # (before the first step there are none to slice)
                opt.load_state_dict({**state[name], "state": saved})
            else:
                _fsdp_load(self.sharded_model, opt, {**state[name], "state": saved})
            settle_states(opt)

    def add_copy(self, like, new):
        """Give parameter `new` the group and a copy of the state of `like` (the late untie's head, record #53):
        appended to like's group, where a fresh optimizer over the untied model puts it (the head is the last
        matrix of model.parameters()), so checkpoints before and after resume alike."""
        for opt in self.parts.values():
            for group in opt.param_groups:
                if any(p is like for p in group["params"]):
                    group["params"].append(new)
                    if like in opt.state:
                        opt.state[new] = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[like].items()}
                    return
        raise ValueError("the parameter to copy is in no group of this optimizer")

    @property
    def state(self):
        """parameter -> its state, of the parameters this rank keeps states for (all of them unless sharded)."""
        return {p: s for opt in self.parts.values() for p, s in _local(opt).state.items()}


def _fsdp_load(model, opt, state):
    """FSDP2: each rank takes its slices of a whole, index-keyed state (torch's distributed-checkpoint API)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, _by_name(state, model, opt), options=StateDictOptions(full_state_dict=True))


def _by_name(state, model, opt):
    """An index-keyed state (one process's) keyed by parameter name, as torch.distributed.checkpoint loads it."""
    names = {id(p): n.replace("_checkpoint_wrapped_module.", "") for n, p in model.named_parameters()}  # torch's names
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    return {"state": {order[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}


def _plain(value):
    """A torchao quantized state as {'quantized': class, 'tensors': its codes/scales, 'meta': its attributes}."""
    if not torch.is_tensor(value) or type(value) is torch.Tensor or not hasattr(value, "__tensor_flatten__"):
        return value
    names, meta = value.__tensor_flatten__()
    return {"quantized": f"{type(value).__module__}.{type(value).__qualname__}",
            "tensors": {n: getattr(value, n) for n in names},
            "meta": [{"dtype": str(m).removeprefix("torch.")} if isinstance(m, torch.dtype) else
                     {"size": list(m)} if isinstance(m, torch.Size) else m for m in meta]}


def _unplain(value, quantized):
    """_plain's inverse for an optimizer that keeps quantized states; dequantized (fp32) for one that does not."""
    if not (isinstance(value, dict) and "quantized" in value):
        return value
    module, _, name = value["quantized"].rpartition(".")
    if not module.startswith("torchao.optim."):  # only torchao's optimizer states are rebuilt from a checkpoint
        raise ValueError(f"it holds a state of type {value['quantized']}, which this code does not load")
    _torchao(f"this checkpoint's optimizer state ({name})")
    cls = getattr(importlib.import_module(module), name)
    meta = [getattr(torch, m["dtype"]) if isinstance(m, dict) and "dtype" in m else
            torch.Size(m["size"]) if isinstance(m, dict) and "size" in m else m for m in value["meta"]]
    state = cls.__tensor_unflatten__(value["tensors"], meta, None, None)
    return state if quantized else state.dequantize()


def settle_states(opt):
    """After a load (or a crop): a torchao optimizer quantizes the fp32 states it was given, as it would have made
    them; a Muon keeps its momentum in its own dtype (torch's load casts each state to its parameter's dtype)."""
    local, quantizes = _local(opt), _quantizes(opt)
    for group in opt.param_groups + (local.param_groups if local is not opt else []):  # torchao: a tensor rate; torch: a float
        if quantizes != torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"])) if quantizes else float(group["lr"])
    for p, s in local.state.items():
        if quantizes:
            for k, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                if k in s and _is_plain(s[k]):
                    q = local._new_buffer(p, signed)
                    if not _is_plain(q):  # a tensor torchao would quantize
                        q.copy_(s[k])
                        s[k] = q
        elif "momentum_buffer" in s and hasattr(local, "momentum_dtype"):
            s["momentum_buffer"] = s["momentum_buffer"].to(local.momentum_dtype)


def _local(opt):
    """The optimizer that holds the states: a ZeroRedundancyOptimizer's own, or opt itself."""
    return getattr(opt, "optim", opt)


def _quantizes(opt):
    """Whether opt is one of torchao's optimizers (it makes its quantized state buffers with _new_buffer)."""
    return hasattr(_local(opt), "_new_buffer")


def _is_plain(t):
    """Whether t holds a plain tensor (under FSDP2 each rank's slice of a DTensor), not torchao's quantized one."""
    return type(t.to_local() if hasattr(t, "to_local") else t) is torch.Tensor


def _torchao(needed_by):
    """torchao.optim, imported on demand (its import logs warnings about CUDA kernels a CPU build lacks, and its
    compiled step warns about a caching hash its state classes lack: noise on every run, not the user's to fix)."""
    warnings.filterwarnings("ignore", message=".*does not implement _stable_hash_for_caching")
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        return importlib.import_module("torchao.optim")
    except ImportError as e:
        raise ConfigError(f"{needed_by} needs torchao ({e}); install it with `pip install torchao`, or use "
                          f"--adamw_states=fp32") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


class Muon(torch.optim.Muon):
    """torch.optim.Muon's update, with two dtypes torch's does not let one choose (set as attributes):
    ns_dtype        the Newton-Schulz products' (torch's: bf16). fp32 on CPUs: a CPU without bf16 matrix units
                    emulates those products (a 256 x 768 by 768 x 256 product: 69 ms in bf16 against 1.1 ms in
                    fp32, 2-core AMD EPYC, torch 2.13), which made Muon's step 80% of a 4 x 256 model's step.
    momentum_dtype  the momentum buffer's: bf16 halves Muon's state (muon_states, issue 27). Each step updates
                    it in fp32 and rounds it to nearest once; the step's update uses the fp32 value.
    The same state (momentum_buffer) as torch's, so checkpoints move between CPU and GPU."""
    ns_dtype = torch.float32
    momentum_dtype = torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:  # made in its dtype here: torch's would make fp32 buffers first
                if p.grad is not None and "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, dtype=self.momentum_dtype)
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            momentum, lr = group["momentum"], group["lr"]
            for p, g, buf in zip(params, grads, bufs):
                m = buf.lerp_(g, 1 - momentum) if buf.dtype == g.dtype else buf.float().lerp_(g, 1 - momentum)
                if m is not buf:
                    buf.copy_(m)
                update = g.lerp(m, momentum) if group["nesterov"] else m
                update = _orthogonalise(update.to(self.ns_dtype), group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))  # Muon's shape scale

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        settle_states(self)


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
    biases and norm gains, fused on CUDA (torchao's 8-bit/4-bit AdamW with adamw_states); with optimizer='muon',
    Muon for the hidden matrices (torch.optim.Muon on GPU with fp32 momentum, else Muon above)."""
    hidden = {id(p) for p in muon_params(model)} if cfg.optimizer == "muon" else set()
    tables = table_params(model)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden | {id(t) for t in tables}]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "kind": "adamw"},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "kind": "adamw"},
              {"params": tables, "weight_decay": 0.0, "kind": "tables"}]  # only when the model has them
    if cfg.adamw_states == "fp32":
        adamw = torch.optim.AdamW
        fused = device.startswith("cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters
        options = {"fused": True} if fused else {}
    else:
        adamw = getattr(_torchao(f"adamw_states={cfg.adamw_states}"), TORCHAO_ADAMW[cfg.adamw_states][0])
        options = {}
        if device.startswith("cuda") and importlib.util.find_spec("triton") is None:  # at the start, not the first step
            raise ConfigError(f"adamw_states={cfg.adamw_states} compiles torchao's optimizer step with Triton, which "
                              f"this machine lacks (Windows, or not installed); use --adamw_states=fp32")
    parts = {"adamw": _build(adamw, [g for g in groups if g["params"]], cfg.sharding == "optimizer", lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2), **options)}
    if hidden:
        plain = device.startswith("cuda") and cfg.muon_states == "fp32"  # torch's, as measured on GPUs (issue 16)
        parts["muon"] = _build(torch.optim.Muon if plain else Muon, [{"params": muon_params(model), "kind": "muon"}],
                               cfg.sharding == "optimizer", lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                               weight_decay=cfg.muon_weight_decay)
        local = _local(parts["muon"])
        if not plain:
            local.ns_dtype = torch.float32 if device.startswith("cpu") else torch.bfloat16
            local.momentum_dtype = MUON_DTYPES[cfg.muon_states]
    return Optimizers(parts, sharded_model=model if cfg.sharding == "fsdp" and _world() > 1 else None)


def _world():
    """Ranks of the torchrun job this process is in (1 without one)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _build(cls, groups, shard, **options):
    """cls over groups, or with shard (under torchrun) a ZeroRedundancyOptimizer of it: ZeRO stage 1 (Rajbhandari
    et al. 2020), each rank keeping the states of about 1/world of the parameters, then broadcasting the ones it
    updated. Muon's update needs each whole matrix, and ZeRO gives each matrix to one rank whole."""
    if not (shard and _world() > 1):
        return cls(groups, **options)
    from torch.distributed.optim import ZeroRedundancyOptimizer
    opt = ZeroRedundancyOptimizer(groups, optimizer_class=cls, **options)
    if _quantizes(opt):  # torchao steps with a tensor rate; ZeRO copies its groups' rate to it
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]))
    return opt


def apply_schedule(optimizer, values, cfg):
    """Set every group's learning rate (and Muon's momentum) to this iteration's values (schedules.at); returns
    AdamW's rate. The peaks come from the settings, never from a loaded state, so a resume may change them."""
    lr = values.lr
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            rate = cfg.muon_lr * lr / cfg.learning_rate
            group["momentum"] = values.muon_momentum
        elif group.get("kind") == "tables":
            rate = table_lr(cfg) * lr / cfg.learning_rate
        else:
            rate = lr
        if torch.is_tensor(group["lr"]):  # torchao's optimizers keep it as a tensor (no recompile per rate)
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate
    return lr


def set_lr(optimizer, it, cfg):
    """apply_schedule with iteration `it`'s values."""
    return apply_schedule(optimizer, schedules.at(it, cfg), cfg)


def state_bytes(model, cfg, world=1):
    """The optimizer states' bytes on one of `world` ranks: per AdamW parameter two moments (fp32, or torchao's
    codes, block scales and code table where it quantizes), per Muon matrix one momentum (fp32 or bf16); a 1/world
    share under sharding (ZeRO hands out whole parameters, so a rank's share is about that)."""
    hidden = {id(p) for p in muon_params(model)} if cfg.optimizer == "muon" else set()
    tables = {id(p) for p in table_params(model)}
    total = sum(p.numel() * MUON_DTYPES[cfg.muon_states].itemsize if id(p) in hidden
                else 2 * _moment_bytes(p.numel(), cfg.adamw_states, id(p) in tables and cfg.table_dtype == "bf16")
                for p in model.parameters() if p.requires_grad)
    return total / world if cfg.sharding != "none" else total


def weight_bytes(model, cfg):
    """The parameters' bytes (and their gradients'): fp32, the tables in table_dtype."""
    tables = sum(p.numel() for p in table_params(model))
    return 4 * model.get_num_params() - (2 * tables if cfg.table_dtype == "bf16" else 0)


def _moment_bytes(n, kind, bf16=False):
    """One AdamW moment of an n-value parameter under adamw_states=kind (torchao's rule for what it quantizes); a
    bf16 parameter's fp32-kind moment is bf16 (AdamW keeps them in the parameter's dtype)."""
    if kind == "fp32":
        return (2 if bf16 else 4) * n
    _, block, bits = TORCHAO_ADAMW[kind]
    if n < TORCHAO_MIN_VALUES or n % block:
        return 4 * n
    return n * bits // 8 + 4 * (n // block) + 4 * 2**bits  # codes, a scale per block, the code table


def checkpoint_bytes(model, cfg):
    """One training checkpoint: the weights plus the optimizers' whole state (as kept: lean states stay lean)."""
    return weight_bytes(model, cfg) + state_bytes(model, cfg)


def fit_state_to_params(optimizer):
    """After a resume with a smaller block_size the position embedding was cropped: crop its optimizer
    state the same way (rows beyond the new block_size are never used again)."""
    for p, state in optimizer.state.items():
        for k, t in state.items():
            if torch.is_tensor(t) and t.dim() == p.dim() and t.dim() >= 1 and t.shape != p.shape \
                    and t.shape[1:] == p.shape[1:] and t.shape[0] > p.shape[0]:
                t = t.dequantize() if hasattr(t, "dequantize") else t  # a torchao state: cropped in fp32
                state[k] = t[:p.shape[0]].clone()
    for opt in optimizer.parts.values():
        settle_states(opt)  # and quantized again


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
    groups = mine.param_groups  # its own options (a sharded optimizer's state_dict would need a gather first)
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
    settle_states(mine)  # fp32 moments into lean ones
    return None
