"""What every script needs around the model: device and precision, the optimizer,
RNG state, and safe, atomic checkpoints."""
import contextlib
import inspect
import os
import random

import numpy as np
import torch

CKPT_FORMAT = "gpt2-shards-ckpt"  # marks our checkpoints; anything else is refused with a clear message
CKPT_VERSION = 1
CKPT_NAME, BEST_NAME = "ckpt.pt", "ckpt_best.pt"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, foreign or incompatible."""


# ----------------------------------------------------------------------------- device and precision

def pick_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device, name="auto"):
    """bf16 where the GPU supports it, else fp16 (with GradScaler); fp32 on CPU and MPS."""
    if name != "auto":
        if name not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {name!r}")
        return name
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def autocast(device, dtype):
    """Mixed precision for forward passes; nothing to do in fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def compile_available(device):
    """(ok, reason): torch.compile needs Triton on GPU and is not supported on MPS or Windows."""
    if os.name == "nt":
        return False, "torch.compile is not supported on Windows"
    if device.startswith("mps"):
        return False, "torch.compile is not supported on MPS"
    if device.startswith("cuda"):
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed"
    return True, ""


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


# ----------------------------------------------------------------------------- optimizer

def make_optimizer(model, weight_decay, learning_rate, betas, device):
    """AdamW; weight decay on matmul and embedding weights (dim >= 2), not on biases and LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.startswith("cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))


# ----------------------------------------------------------------------------- RNG state

def rng_state():
    """Python, NumPy, torch and CUDA generator states, as plain types and tensors (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, obj):
    """torch.save to a temporary file, fsync, then rename: a crash leaves the previous checkpoint intact."""
    obj = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **obj}
    tmp = path + ".tmp"
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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load with weights_only=True, so a downloaded checkpoint cannot run code."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first, or check out_dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a corrupt file fails in many ways (UnpicklingError, EOFError, IndexError, KeyError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or not a checkpoint this code can load safely ({first[:160]}); "
                              f"use another checkpoint or start with init_from='scratch'") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (foreign or nanoGPT-style file); "
                              f"start with init_from='scratch', or load OpenAI weights with init_from='gpt2'")
    if ckpt.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path} is checkpoint version {ckpt.get('version')}, this code reads {CKPT_VERSION}")
    return ckpt


def find_checkpoint(out_dir, prefer_best=True):
    """ckpt_best.pt if present (and preferred), else ckpt.pt."""
    names = [BEST_NAME, CKPT_NAME] if prefer_best else [CKPT_NAME]
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            return path
    raise CheckpointError(f"no {' or '.join(names)} in {out_dir!r}; train a model there first, or check --out_dir")


def model_from_checkpoint(ckpt):
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model


def checkpoint_bytes(n_params):
    """Size of one training checkpoint: fp32 weights plus AdamW's two fp32 moments."""
    return 3 * 4 * n_params
