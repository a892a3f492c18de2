"""Where a command runs: the device and precision, torch.compile, processes under torchrun, and the wrappers a
training run puts around the model (activation checkpointing, FSDP2, DDP, torch.compile), applied from outside
it, in one place (wrap_model): model.py describes the model only.
"""
import contextlib
import datetime
import functools
import os
import platform
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .errors import ConfigError


# ----------------------------------------------------------------------------- device and precision

def pick_device(name="auto"):
    """'auto': cuda, then mps, then cpu. A device asked for by name must be there: on a machine without it
    the answer is one ConfigError line, not a traceback from deep inside torch."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
            raise ConfigError(f"device={name!r} but CUDA is not available here (torch {torch.__version__} is {build}); "
                              f"use --device=cpu or --device=auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} visible GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not has_mps:
        raise ConfigError("device='mps' but Apple's MPS backend is not available here; use --device=cpu or --device=auto")
    return name


def bf16_supported(device):
    """Native bf16 tensor cores: compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported()
    is also True on GPUs that only emulate bf16 (T4, V100), where it is slow; those get fp16 instead."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(device, name="auto"):
    """bf16 where the GPU has it natively, else fp16 (with GradScaler); fp32 on CPU and MPS."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bfloat16" if bf16_supported(device) else "float16"
    return "float32"


def autocast(device, dtype):
    """Mixed precision for forward passes; nothing to do in fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def prepare_device(device, threads=0):
    """What every training or benchmarking process sets first; returns the CPU threads torch uses."""
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed, fine for training
    torch.backends.cudnn.allow_tf32 = True
    if device.startswith("cpu"):
        keep_freed_memory()  # ~2x faster CPU steps: no page faults for re-allocated activations
    return cpu_threads(threads)


FP8_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (RTX 40xx, L4) and Hopper (H100) on


def check_fp8(device, fp8_head):
    """fp8_head where the GPU has no FP8 tensor cores (RTX 30xx, A100, a CPU, MPS) is one line at the start."""
    if not fp8_head:
        return
    if not device.startswith("cuda"):
        raise ConfigError(f"fp8_head runs the head in FP8 on GPUs with FP8 tensor cores (compute capability 8.9+: "
                          f"RTX 40xx, L4, H100), not on {device}; use --fp8_head=False")
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_CAPABILITY:
        raise ConfigError(f"fp8_head needs FP8 tensor cores (compute capability 8.9+: RTX 40xx, L4, H100); "
                          f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}; use --fp8_head=False")


def c_compiler():
    """The C compiler inductor and Triton would build with ($CC, else cc, gcc or clang on PATH), or None."""
    import shutil
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        if shutil.which(name):
            return name
    return None


def compile_available(device):
    """(ok, reason): torch.compile needs a C compiler (inductor builds its CPU kernels and Triton its launchers
    with one), Triton on GPU, and is not supported on MPS or Windows."""
    if os.name == "nt":
        return False, "torch.compile is not supported on Windows"
    if device.startswith("mps"):
        return False, "torch.compile is not supported on MPS"
    if device.startswith("cuda"):
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed"
    if c_compiler() is None:
        return False, ("no C compiler found (CC, cc, gcc, clang), which torch.compile needs; install one "
                       "(apt install gcc) to compile, or pass --compile=False to silence this")
    return True, ""


def cpu_threads(n=0):
    """Use n CPU threads for torch's operators (0: keep torch's default); returns the number in use."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


MALLOC_KEEP_BYTES = 2 ** 31 - 1  # glibc thresholds (the largest mallopt takes): heap-serve and keep up to 2 GB blocks


def keep_freed_memory():
    """CPU training: stop glibc from giving big freed blocks back to the kernel.

    glibc serves every allocation above its mmap threshold (adaptive, at most 32 MB) with its own mmap and
    unmaps it when freed, so each step's large activations and logits are page-faulted in again: ~200k
    minor faults and ~38% of the time in the kernel on the tiny config (issue 13). Raising the mmap and
    trim thresholds keeps freed blocks in the heap for the next step; PyTorch has no caching allocator on
    CPU to do it. The price is that the process keeps its peak memory. No-op off glibc (macOS, Windows)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES) and mallopt(M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES))


class BatchCopier:
    """Host batches onto the device. On CUDA each batch is staged in pinned memory, so the copy is truly
    asynchronous (non_blocking from pageable memory synchronises), and the caller can fetch the next
    micro-batch while the GPU computes. Two pinned buffer pairs are used in turn; a pair is refilled only
    after the event recorded behind its last copy has completed, so a copy in flight is never overwritten."""

    def __init__(self, device):
        self.device, self.cuda = device, device.startswith("cuda")
        self.buffers, self.events, self.turn = [None, None], [None, None], 0

    def __call__(self, x, y):
        if not self.cuda:
            return x.to(self.device), y.to(self.device)  # a no-op on CPU
        i, self.turn = self.turn, self.turn ^ 1
        if self.events[i] is not None:
            self.events[i].synchronize()  # the copy out of this pair has finished
        if self.buffers[i] is None or self.buffers[i][0].shape != x.shape:
            self.buffers[i] = tuple(torch.empty(x.shape, dtype=x.dtype, pin_memory=True) for _ in range(2))
        hx, hy = self.buffers[i]
        hx.copy_(x)
        hy.copy_(y)
        out = hx.to(self.device, non_blocking=True), hy.to(self.device, non_blocking=True)
        self.events[i] = torch.cuda.Event()
        self.events[i].record()
        return out


def step_seed(seed, rank, step):
    """The torch seed of one optimizer step on one rank: dropout masks differ between ranks and steps,
    and a resumed run (on any number of ranks) draws exactly the masks an uninterrupted one would,
    with no generator state to save."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows: benchmarks name their machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device):
    """What a benchmark names its machine by: the GPU's name on CUDA, else the CPU's."""
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else cpu_name()



# ----------------------------------------------------------------------------- torchrun

@dataclass
class Processes:
    """This process's place in the run: one process, or one rank of a torchrun job."""
    ddp: bool
    rank: int
    local_rank: int
    world: int
    device: str

    @property
    def master(self):
        return self.rank == 0


def start_processes(device="auto", backend="", timeout_min=30):
    """Processes for a run. Under torchrun (RANK is set) each rank uses the GPU cuda:LOCAL_RANK with NCCL,
    or the CPU with gloo, and joins the process group; a device that cannot work that way is refused.
    timeout_min: how long a collective waits for a rank that is busy (a long eval or checkpoint on rank 0)."""
    if "RANK" not in os.environ:
        return Processes(False, 0, 0, 1, pick_device(device))
    import torch.distributed as dist
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda:"):
        raise ConfigError(f"device={device!r} under torchrun: each rank uses the GPU cuda:LOCAL_RANK; pass "
                          f"--device=cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if device == "mps":
        raise ConfigError("torchrun with device='mps' is not supported; use --device=cpu")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started {local_rank + 1}+ processes on this node but it has "
                              f"{torch.cuda.device_count()} visible GPU(s); lower --nproc_per_node")
        dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
    else:  # 'cuda' on a machine without it is refused by pick_device, never a silent CPU run
        dev = "cpu" if device == "auto" else pick_device(device)
    dist.init_process_group(backend=backend or ("nccl" if dev.startswith("cuda") else "gloo"),
                            timeout=datetime.timedelta(minutes=timeout_min))
    return Processes(True, rank, local_rank, world, dev)


# ----------------------------------------------------------------------------- wrappers of the model in training

# Activation checkpointing of the blocks (issue 27), PyTorch's own (torch.utils.checkpoint, non-reentrant: it works
# compiled and under DDP, and replays dropout's RNG): 'full' keeps each block's input and recomputes the block in the
# backward pass (~ +1/3 FLOPs); 'selective' keeps the matmul and attention outputs and recomputes only the cheap
# pointwise work between them (norms, activations, rotary, residual adds): most of full's saving at a few % of time.
SAVED_OPS = [torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default] + [
    getattr(torch.ops.aten, name).default for name in ("_scaled_dot_product_flash_attention",
                                                       "_scaled_dot_product_efficient_attention",
                                                       "_scaled_dot_product_cudnn_attention",
                                                       "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name)] + (
    [torch.ops.higher_order.flex_attention] if hasattr(torch.ops.higher_order, "flex_attention") else [])  # CUDA's masks


def _keep_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


# activation_checkpointing -> torch.utils.checkpoint's extra arguments (None: no checkpointing). 'full' passes none:
# torch.compile cannot trace an explicit context_fn=noop_context_fn (a dynamo NotImplementedError, torch 2.13)
CHECKPOINTING = {"none": None, "full": {},
                 "selective": {"context_fn": functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)}}


def _recompute(block, *args, context_fn=None, **kwargs):
    """A block's forward under torch.utils.checkpoint when gradients are being made; as it is otherwise (evals,
    sampling: nothing to recompute, and a KV cache must be updated once)."""
    if not torch.is_grad_enabled():
        return block(*args, **kwargs)
    return checkpoint(block, *args, use_reentrant=False, **({"context_fn": context_fn} if context_fn else {}), **kwargs)


def checkpoint_blocks(model, mode):
    """Wrap every transformer block for activation checkpointing `mode` (CHECKPOINTING), in place. PyTorch's
    checkpoint_wrapper (as torchtitan applies it) keeps the state_dict's names, so checkpoints do not change."""
    if CHECKPOINTING[mode] is None:
        return model
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = checkpoint_wrapper(block, checkpoint_fn=_recompute, **CHECKPOINTING[mode])
    return model


TABLE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # table_dtype


def cast_tables(model, table_dtype):
    """The value-embedding and bigram tables in table_dtype, in place (the same Parameter objects: build the
    optimizer afterwards, and AdamW keeps their moments in that dtype too). modded-nanogpt keeps its embeddings in
    bf16 (record #18: `m.bfloat16()` for every nn.Embedding); a checkpoint then holds them in bf16, and sample,
    eval and export load them into the fp32 model exactly."""
    from .optim import table_params
    for p in table_params(model):
        p.data = p.data.to(TABLE_DTYPES[table_dtype])
    return model


def tie_head(model):
    """The late untie's first phase (untie_at, record #53): the head shares the token embedding's weights (one
    Parameter, as tie_weights=True makes it) on a model built untied. A checkpoint then holds both names with the
    same values: sample, eval and export load it as the ordinary untied model it is."""
    model.lm_head.weight = model.transformer.wte.weight
    return model


def head_tied(model):
    return model.lm_head.weight is model.transformer.wte.weight


def untie_head(wrapped, optimizer, cfg, procs, log):
    """The late untie: the head goes on with weights of its own (a copy of the shared ones) and a copy of their
    optimizer state; under torchrun the DDP wrapper is made again, so the new Parameter's gradients are
    all-reduced too (and compiled again)."""
    model = wrapped.raw
    head = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    optimizer.add_copy(model.transformer.wte.weight, head)
    model.lm_head.weight = head
    if wrapped.ddp is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP
        wrapped.ddp = DDP(model, device_ids=[procs.local_rank] if procs.device.startswith("cuda") else None)
        wrapped.model = torch.compile(wrapped.ddp) if cfg.compile and compile_available(procs.device)[0] else wrapped.ddp
    log("the head unties from the token embedding: each goes on alone (untie_at)")


@dataclass
class Wrapped:
    """The model a training step calls (compiled, DDP-wrapped), and the modules under it."""
    model: torch.nn.Module  # what the step calls
    raw: torch.nn.Module  # model.GPT itself (sharded in place under fsdp): evals, checkpoints, parameters
    ddp: torch.nn.Module | None  # the DDP wrapper, for no_sync (None: no DDP)
    fsdp: bool  # weights, gradients and states in slices across the ranks


def wrap_model(model, cfg, procs, log):
    """model (on its device) wrapped for training, in PyTorch's order: activation checkpointing of each block,
    then FSDP2 (sharding='fsdp' under torchrun) or DDP, then torch.compile (DDP before compile, so the gradient
    all-reduce overlaps the backward). Build the optimizer on .raw afterwards (FSDP2 shards the parameters)."""
    from .attention import flex_runs
    c = model.config
    if procs.device.startswith("cuda") and (c.doc_mask or c.attn_window) and not flex_runs(torch.device(procs.device))[0]:
        log(f"attention: {flex_runs(torch.device(procs.device))[1]}: SDPA with a dense mask instead (the same results; "
            f"memory grows with block_size^2 per row, so keep rows short)")
    cast_tables(model, cfg.table_dtype)
    checkpoint_blocks(model, cfg.activation_checkpointing)
    fsdp = procs.ddp and cfg.sharding == "fsdp"
    ddp = None
    if fsdp:  # it all-gathers and reduce-scatters itself
        shard_model(model, procs.device, TABLE_DTYPES[cfg.fsdp_dtype])
    elif procs.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp = DDP(model, device_ids=[procs.local_rank] if procs.device.startswith("cuda") else None)
    outer = ddp or model
    if cfg.compile:
        ok, why = compile_available(procs.device)
        if ok:
            log("compiling the model (the first iterations are slow)")
            outer = torch.compile(outer)
        else:
            log(f"compile switched off: {why}")
    return Wrapped(model=outer, raw=model, ddp=ddp, fsdp=fsdp)


def shard_model(model, device, param_dtype=torch.float32):
    """FSDP2 (torch.distributed.fsdp.fully_shard) over every rank: each block one unit, then the root (embeddings,
    head, final norm). Each rank keeps 1/world of every parameter, its gradient and its optimizer state; a unit's
    weights are all-gathered for its forward and backward and its gradients reduce-scattered. fp32: the weights are
    gathered as they are and autocast casts them in the matmuls, as under DDP, so the run is a replica's run.
    bf16 (fsdp_dtype): gathered in bf16 (half the traffic), gradients reduce-scattered in fp32. What that changes:
    every weight is used as its bf16 rounding, which under bf16 autocast the matmuls did anyway; the rest (norm
    gains, embeddings, the value and skip weights, the head in the loss) computes in bf16 too, and the gradients are
    made in bf16 before their fp32 reduction and fp32 update."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    # a block returns its attention values (a view of its qkv projection) for the value residual; model.py never
    # changes a block's outputs in place, and the 2-rank tests match one process, so this warning is noise here
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    from torch.distributed.fsdp import MixedPrecisionPolicy
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    register_fsdp_forward_method(model, "token_losses")  # the evals' entry point gathers the root's weights too
    return model


def whole_state(obj, keep):
    """obj (a state dict) with each DTensor slice replaced by its whole value, on the CPU where keep (rank 0), else
    dropped. A collective: every rank calls it on the same structure. Written here rather than with
    torch.distributed.checkpoint's get_*_state_dict: on the ranks that do not keep the result those drop their
    gathers unwaited, and a gloo rank then aborted at exit now and then ('terminate called without an active
    exception', 2 of 4 two-rank test runs)."""
    if isinstance(obj, dict):
        return {k: whole_state(v, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        return [whole_state(v, keep) for v in obj]
    if not torch.is_tensor(obj):
        return obj
    t = _waited(obj.full_tensor() if hasattr(obj, "full_tensor") else obj)  # DTensor: an all-gather
    return t.detach().cpu() if keep else None


def _waited(t):
    """t with its pending collective waited for: an AsyncCollectiveTensor, or one inside a tensor subclass (torchao's
    quantized states, gathered as their codes and scales)."""
    if type(t).__name__ == "AsyncCollectiveTensor":
        return t.wait()
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, meta = t.__tensor_flatten__()
        return type(t).__tensor_unflatten__({n: _waited(getattr(t, n)) for n in names}, meta, None, None)
    return t


def whole_on_rank0(model, read):
    """read() (a state_dict of the FSDP2-sharded model or of its optimizer) whole on rank 0, {} on the others.
    A collective: call it on every rank."""
    import torch.distributed as dist
    model.reshard()  # an eval's forward leaves the root's weights gathered (it is resharded only after a backward)
    rank0 = dist.get_rank() == 0
    state = whole_state(read(), keep=rank0)
    return state if rank0 else {}


def model_state(model, sharded):
    """The model's whole state_dict on rank 0 (a collective when sharded: call it on every rank; others get {})."""
    return whole_on_rank0(model, model.state_dict) if sharded else model.state_dict()


def stop_processes():
    """Leave the process group: first collect the DDP wrapper and its reducer (they hold gloo work that, freed only
    at interpreter exit, aborted a rank with 'terminate called without an active exception' about half the time
    in 2-rank CPU runs), then destroy the group while the interpreter is whole."""
    import gc
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
