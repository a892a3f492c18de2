"""The head matmul and the cross-entropy as one op that never holds full (B*T, vocab) logits.

    head_loss(x, weight, targets, softcap)         mean cross-entropy, its gradients made in the forward pass
    head_row_losses(x, weight, targets, softcap)   each row's loss, no gradients (evals)

model.py's GPT calls these for its loss; they know nothing about the model around them.
"""
import contextlib
import hashlib
import pathlib

import torch

LOSS_CHUNK = 2048  # rows of logits the loss holds at a time: (2048, 50304) bf16 is 0.2 GB, never (B*T, vocab)
SOFTMAX_ROWS = 512  # eager mode: rows of a chunk whose fp32 softmax exists at once ((512, 50304) fp32: 0.1 GB)
GRAD_W_BLOCK = 4096  # CPU, bf16: vocab rows of the head's gradient per product, so no (vocab, C) temporary
# fp8(): the training head's three matmuls in FP8 (modded-nanogpt record #19, torch._scaled_mm: 2x bf16's tensor-core
# rate on RTX 40xx and H100). Each operand is scaled into FP8's range, then the product scaled back: x and the
# weight in e4m3 (record #19's 2 and 32: a normed hidden state of |x| < 224, a head weight of |w| < 14), the
# softmax gradient in e5m2 (its range; |g| <= 1 here, where the record's held the mean's 1/n: its 2**29 is ours
# 2**15). Evals keep the head in the compute dtype, as the record does.
FP8_X_SCALE, FP8_W_SCALE, FP8_G_SCALE = 2.0, 32.0, 2.0 ** 15
FP8 = torch.float8_e4m3fn
_fp8 = False  # set by fp8() around a training forward (gptlib/step.py); read where the op is called


@contextlib.contextmanager
def fp8(on=True):
    """The training loss's head matmuls in FP8 inside the block (a precision choice of the step, as autocast is)."""
    global _fp8
    before, _fp8 = _fp8, on
    try:
        yield
    finally:
        _fp8 = before

# The head matmul and the cross-entropy are one op that works LOSS_CHUNK rows at a time and makes its gradients
# in the forward pass (the loss is the graph's last op, so the backward only scales them): full (B*T, vocab)
# logits never exist, neither for the loss nor for its backward. The op is a torch.library.custom_op, so that
# torch.compile sees one opaque call with a registered shape function. When inductor could see the chunk loop it
# fused across chunks, which kept every chunk's bf16 logits alive at once, and it baked the batch size into the
# graph (a recompile per micro-batch size; issue 16).
# torch.compile's on-disk caches know a custom op by its name, not by its fake, setup or backward code: an edited
# backward kept being served the old one's compiled graph, silently (pytorch/pytorch#144344, #160472; seen here
# when the backward took over the mean's 1/n). So the ops' names carry a digest of this file: an edit, or an
# update of the project, compiles them afresh. The module's name is in it too, so an exported copy of this file
# (export.py's trust_remote_code folders) loaded beside the project registers ops of its own.
_OP_TAG = hashlib.sha256(pathlib.Path(__file__).read_bytes() + __name__.encode()).hexdigest()[:12]


def _chunk_loss(z, y, w, scale, softcap, want_grad):
    """One chunk of logits z (n, V), targets y (n, K) (-1: ignored) weighted by w (K,) (multi-token prediction:
    the next K tokens; K = 1 otherwise) -> (each row's weighted loss (n,) in fp32, g): with want_grad, g is
    d(sum of scale * loss)/dz written over z (z's dtype: the logits are dead by then, so the gradient needs no
    buffer of its own), else None. The softmax is in fp32 whatever z's dtype, SOFTMAX_ROWS rows at a time: eager
    mode makes fp32 temporaries of the rows it works on (log_softmax converts a bf16 input to fp32 before it
    starts: only fp16 on CUDA skips that copy), and a block keeps them at 2 x (512, V) instead of 2 x (n, V).
    _chunk_loss_fusible is the same math for inductor, which needs no temporaries."""
    row_loss = torch.empty(z.size(0), dtype=torch.float32, device=z.device)
    for lo in range(0, z.size(0), SOFTMAX_ROWS):
        rows = slice(lo, lo + SOFTMAX_ROWS)
        row_loss[rows] = _block_loss(z[rows], y[rows], w, scale[rows], softcap, want_grad)
    return row_loss, (z if want_grad else None)


def _block_loss(z, y, w, scale, softcap, want_grad):
    """_chunk_loss on a block of rows z (m, V) (a view: the gradient is written into the chunk). Each line is
    one pass over the block: exp, the one-hot and the cap's gradient are in place, the scale and the cast back
    into z are one op. With K targets a row's gradient is sum(w) softmax - sum_k w_k one-hot_k."""
    logits = z
    if softcap:
        t = torch.tanh(z.float() / softcap)  # kept for the gradient of the cap
        z = softcap * t
    lsm = torch.log_softmax(z, dim=1, dtype=torch.float32)  # (m, V): log p
    safe = y.clamp(min=0)  # (m, K)
    wk = w * (y != -1)  # (m, K): each target's weight, 0 where ignored
    row_loss = -(lsm.gather(1, safe) * wk).sum(dim=1)  # (m,)
    if want_grad:
        g = lsm.exp_()
        if y.size(1) > 1:
            g.mul_(wk.sum(dim=1, keepdim=True))
        g.scatter_add_(1, safe, -wk)  # - the weighted one-hots
        if softcap:
            g.mul_(t.mul_(t).neg_().add_(1))  # back through the cap: d(cap * tanh(z / cap))/dz = 1 - t^2
        torch.mul(g, scale[:, None], out=logits)  # rows that do not count have scale 0
    return row_loss


def _chunk_loss_fusible(z, y, w, scale, softcap, want_grad):
    """_chunk_loss without in-place ops or a scatter, for inductor: the log-sum-exp, then the gradient in z's
    dtype, no fp32 (n, V) buffer at all. The gradient gets a buffer of its own, not z's as in eager mode: written
    over z, which the log-sum-exp reads, it came out as a separate pointwise kernel taking 0.85 ms per 2,048-row
    chunk (torch.profiler, H200), where reading and writing the chunk's bf16 logits takes about 0.09 ms at the
    card's bandwidth. bench_loss, H200, torch 2.11, 16,384 rows, bf16: 14.70 ms and 472 MiB over z, 9.28 ms and
    862 MiB in a buffer of its own (with the previous chunk's gradient still alive then: _head_chunks now frees
    it first); a 124M micro-step of 16 x 1024: 40.41 against 35.73 ms (BENCHMARKS.md).
    (In eager mode this form would make five fp32 temporaries, hence the two versions.)"""
    zf = z.float()
    if softcap:
        t = torch.tanh(zf / softcap)
        zf = softcap * t
    lse = torch.logsumexp(zf, dim=1, keepdim=True)  # (n, 1)
    safe = y.clamp(min=0)  # (n, K)
    wk = w * (y != -1)  # (n, K)
    row_loss = ((lse - zf.gather(1, safe)) * wk).sum(dim=1)  # (n,)
    if not want_grad:
        return row_loss, None
    p = torch.exp(zf - lse)
    if y.size(1) > 1:
        p = p * wk.sum(dim=1, keepdim=True)
    vocab = torch.arange(z.size(1), device=z.device)[None, :]
    for k in range(y.size(1)):  # the weighted one-hots, never stored: fused
        p = p - (vocab == safe[:, k:k + 1]).float() * wk[:, k:k + 1]
    g = p * scale[:, None]
    if softcap:
        g = g * (1 - t * t)
    return row_loss, g.to(z.dtype)


_fused_chunk_loss = None  # _chunk_loss_fusible compiled by inductor, made on first use inside a compiled model


def _chunk_fn(fuse):
    """The per-chunk softmax: as inductor kernels when the model around the loss is compiled, else eager."""
    global _fused_chunk_loss
    if not fuse:
        return _chunk_loss
    if _fused_chunk_loss is None:
        _fused_chunk_loss = torch.compile(_chunk_loss_fusible, dynamic=True)  # one graph for every chunk length
    return _fused_chunk_loss


def _add_grad_w(grad_w, g, xc):
    """grad_w (V, C) fp32 += g.T @ xc: the sum over chunks in fp32 even when g and xc are bf16/fp16."""
    if g.dtype == grad_w.dtype:
        grad_w.addmm_(g.t(), xc)
    elif grad_w.is_cuda:  # cuBLAS accumulates a low-precision product straight into fp32: no (V, C) temporary
        torch.addmm(grad_w, g.t(), xc, out_dtype=torch.float32, out=grad_w)
    else:  # CPU has no fp32-out addmm for bf16: a block of vocab rows at a time bounds the temporaries
        for lo in range(0, g.size(1), GRAD_W_BLOCK):
            grad_w[lo:lo + GRAD_W_BLOCK] += g[:, lo:lo + GRAD_W_BLOCK].t() @ xc  # (block, C)


def _to_fp8(t, scale, dtype=FP8):
    return (t * scale).to(dtype)


def _mm_fp8(a, b, scale_a, scale_b, out_dtype, fast=True):
    """a @ b of FP8 operands (a row-major, b column-major, as torch._scaled_mm takes them), scaled back."""
    one = torch.ones((), dtype=torch.float32, device=a.device)
    return torch._scaled_mm(a, b, scale_a=one / scale_a, scale_b=one / scale_b, out_dtype=out_dtype, use_fast_accum=fast)


def _fp8_grads(g, x8, w8, grad_x, grad_w):
    """A chunk's gradients from its softmax gradient g (n, V) in FP8 e5m2: grad_x (n, C) written in place, and
    g.T @ x accumulated into grad_w (V, C) fp32 (record #19's layouts: each operand in the order _scaled_mm wants)."""
    g8 = _to_fp8(g, FP8_G_SCALE, torch.float8_e5m2)
    grad_x.copy_(_mm_fp8(g8, w8.t().contiguous().t(), FP8_G_SCALE, FP8_W_SCALE, torch.bfloat16, fast=False))
    grad_w += _mm_fp8(x8.t().contiguous(), g8.t().contiguous().t(), FP8_X_SCALE, FP8_G_SCALE, torch.float32, fast=False).t()


def _head_chunks(x, weight, targets, tw, softcap, compute_dtype, fuse, want_grads):
    """Loop over chunks of rows: per-row losses (N,) fp32, and with want_grads the gradients of their sum
    over targets != -1 w.r.t. x (x's dtype) and weight (weight's dtype), made in the same pass.
    The sum's, not the mean's: each chunk's gradient lives in its logits' buffer, in the compute dtype, and the
    mean's 1/n there (6e-5 at 16K rows) flushed fp16's small probabilities to zero, since a GradScaler scales
    only after this op (fp16 grad_x error 4e-2, against 3e-4 for full logits under a GradScaler). The
    backward applies 1/n in fp32."""
    with torch.autocast(x.device.type, enabled=False):  # the dtypes below are explicit
        chunk_loss = _chunk_fn(fuse)
        scale = (targets[:, 0] != -1).float()  # (N,): 0 on rows that do not count
        f8 = compute_dtype == FP8
        w = _to_fp8(weight, FP8_W_SCALE) if f8 else weight.to(compute_dtype)  # (V, C), cast once for every chunk
        row_loss = torch.empty(x.size(0), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if want_grads else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grads else None
        for lo in range(0, x.size(0), LOSS_CHUNK):
            rows = slice(lo, lo + LOSS_CHUNK)
            xc = _to_fp8(x[rows], FP8_X_SCALE) if f8 else x[rows].to(compute_dtype)  # (n, C)
            z = _mm_fp8(xc, w.t(), FP8_X_SCALE, FP8_W_SCALE, torch.bfloat16) if f8 else xc @ w.t()  # (n, V) logits
            row_loss[rows], g = chunk_loss(z, targets[rows], tw, scale[rows], softcap, want_grads)
            del z  # (eager: g is z's buffer, overwritten)
            if want_grads and f8:
                _fp8_grads(g, xc, w, grad_x[rows], grad_w)
            elif want_grads:  # g: d (sum of row losses) / d logits, (n, V)
                grad_x[rows] = g @ w  # (n, C)
                _add_grad_w(grad_w, g, xc)
            del g  # before the next chunk's logits: kept, it made 3 (n, V) buffers at once instead of 2
        return row_loss, grad_x, (grad_w.to(weight.dtype) if want_grads else None)


@torch.library.custom_op(f"gpt2kit::head_loss_{_OP_TAG}", mutates_args=())
def _head_loss_op(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, w: torch.Tensor, softcap: float,
                  compute_dtype: torch.dtype, fuse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, the gradients of the summed loss w.r.t. x and weight): the backward multiplies these by its
    incoming gradient / n. targets (N, K) weighted by w (K,)."""
    row_loss, grad_x, grad_w = _head_chunks(x, weight, targets, w, softcap, compute_dtype, fuse, want_grads=True)
    return row_loss.sum() / _count(targets), grad_x, grad_w


def _count(targets):
    """n of the mean: the rows that count, by their next-token target (at least 1, so that a batch of only
    ignored rows gives 0, not NaN)."""
    return (targets[:, 0] != -1).sum().clamp(min=1)


@_head_loss_op.register_fake
def _(x, weight, targets, w, softcap, compute_dtype, fuse):
    return x.new_empty((), dtype=torch.float32), torch.empty_like(x), torch.empty_like(weight)


def _head_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2], _count(inputs[2]))


def _head_loss_backward(ctx, grad_loss, _grad_gx, _grad_gw):
    grad_x, grad_w, n = ctx.saved_tensors
    s = grad_loss / n  # fp32 scalar: the mean's 1/n times what comes in (1/grad_accum, a GradScaler's scale)
    if torch.compiler.is_compiling():  # inductor reuses the saved buffers for these products by itself
        return grad_x * s, grad_w * s, None, None, None, None, None
    # eager: scale in place, no copy of the (vocab, C) gradient (a second backward through this graph fails
    # loudly on the saved tensors' version counter instead of using scaled values)
    return grad_x.mul_(s), grad_w.mul_(s), None, None, None, None, None


_head_loss_op.register_autograd(_head_loss_backward, setup_context=_head_loss_setup)


@torch.library.custom_op(f"gpt2kit::head_row_losses_{_OP_TAG}", mutates_args=())
def _row_losses_op(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                   compute_dtype: torch.dtype, fuse: bool) -> torch.Tensor:
    """Each row's loss (N,) fp32, 0 where targets == -1: no gradients (evals)."""
    return _head_chunks(x, weight, targets[:, None], x.new_ones(1, dtype=torch.float32), softcap, compute_dtype,
                        fuse, want_grads=False)[0]


@_row_losses_op.register_fake
def _(x, weight, targets, softcap, compute_dtype, fuse):
    return x.new_empty(x.shape[:1], dtype=torch.float32)


def _compute_dtype(x):
    """The dtype autocast would run the head matmul in, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def head_loss(x, weight, targets, softcap=0.0, mtp=None):
    """Mean cross-entropy of the logits x @ weight.T over targets != -1, without full logits. x (N, C),
    weight (V, C), targets (N,), or with mtp (K,) the targets of the next K tokens (N, K) and their weights
    (multi-token prediction: the loss is sum_k mtp[k] CE_k, over the rows whose next token counts). Inside a
    compiled model the per-chunk softmax runs as inductor kernels."""
    dtype, fuse = _compute_dtype(x), torch.compiler.is_compiling()
    if mtp is None:
        targets, mtp = targets[:, None], x.new_ones(1, dtype=torch.float32)  # (N,) -> (N, 1)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _head_loss_op(x, weight, targets, mtp.float(), float(softcap), FP8 if _fp8 else dtype, fuse)[0]
    return (_row_losses_op(x, weight, targets[:, 0], float(softcap), dtype, fuse).sum() / _count(targets)
            if targets.size(1) == 1 else _head_chunks(x, weight, targets, mtp.float(), float(softcap), dtype, fuse,
                                                      want_grads=False)[0].sum() / _count(targets))


def head_row_losses(x, weight, targets, softcap=0.0):
    """Cross-entropy of each row (N,) fp32, 0 where targets == -1; no gradients."""
    return _row_losses_op(x, weight, targets, float(softcap), _compute_dtype(x), torch.compiler.is_compiling())
