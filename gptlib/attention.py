"""Which keys each query may see, and the attention call that applies it (model.py's attention uses these).

    doc_layout(idx, eot, prev)          document ids and positions within the document, from the EOT tokens
    make_masks(...)                     per window kind, a mask: document-causal, sliding-window, or both
    attend(q, k, v, mask, past, p)      scaled dot-product attention under one of those masks

Two exact forms of the same mask (issue 26):
- a FlexAttention BlockMask (Triton kernels that skip the blocks no query sees: long rows cost what their
  windows and documents cost, not T^2), used on CUDA;
- a dense boolean (B, 1, Tq, Tk) mask for SDPA everywhere else. On CPU (no Triton) FlexAttention runs either
  as an unfused reference that builds the whole score matrix (0.90 s against SDPA's 0.005 s for 2 x 4 heads x
  512 tokens, torch 2.13, 2-core EPYC) or through inductor's C++ template, which costs a 15 s compile and was no
  faster (0.006 s): the dense mask is the CPU form. tests/test_speedrun.py checks the two agree within 1e-5.
Nothing here knows the model: it takes tokens and tensors, returns masks and tensors.
"""
import importlib.util
import os

import torch
import torch.nn.functional as F

SMALL_SMEM_BYTES = 160 * 1024  # below this much shared memory per block (RTX 30xx/40xx: ~100 KB; A100/H100: 164-228 KB)
# FlexAttention's default Triton tiles for a head size of 64-128 ask for more shared memory than consumer cards have
# ("out of resource: shared memory", pytorch/pytorch#133254); these smaller tiles are the ones reported to run on a 3090
SMALL_SMEM_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32}

_flex = None  # torch.compile(flex_attention), made on first use: eager FlexAttention is an unfused reference


def doc_layout(idx, eot, prev=None):
    """Document ids (B, T) and positions within the document (B, T) of tokens idx (B, T). A document starts at
    each eot token (the shards put one before every document), which sits at position 0 of its document.
    prev: the (doc id, position) of the token before idx[:, 0], each (B,), when idx continues cached tokens;
    tokens before the first eot of a row without prev count from the row's start."""
    B, T = idx.shape
    is_start = idx == eot
    docs = torch.cumsum(is_start, dim=1)  # (B, T)
    at = torch.arange(T, device=idx.device).expand(B, T)
    last_start = torch.cummax(torch.where(is_start, at, -1), dim=1).values  # (B, T): -1 before any start
    first = 0 if prev is None else prev[1][:, None] + 1  # the position of a row's first token if it starts no document
    positions = torch.where(last_start >= 0, at - last_start, at + first)
    if prev is not None:
        docs = docs + prev[0][:, None]
    return docs, positions


def dense_mask(q_docs, k_docs, past, window):
    """(B, 1, Tq, Tk) bool: query i (at absolute index past + i) sees key j when j <= past + i, when
    past + i - j < window (window None: any distance) and, with docs given ((B, Tq) and (B, Tk)), in the same
    document."""
    Tq, Tk = q_docs.size(1), k_docs.size(1)
    q_at = torch.arange(past, past + Tq, device=q_docs.device)[:, None]  # (Tq, 1)
    k_at = torch.arange(Tk, device=q_docs.device)[None, :]  # (1, Tk)
    mask = k_at <= q_at  # (Tq, Tk)
    if window is not None:
        mask = mask & (q_at - k_at < window)
    return (mask[None] & (q_docs[:, :, None] == k_docs[:, None, :]))[:, None]  # (B, 1, Tq, Tk)


def block_mask(docs, window):
    """The same mask as dense_mask(docs, docs, 0, window) as a FlexAttention BlockMask, for rows of docs (B, T)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(b, h, q, k):
        seen = (k <= q) & (docs[b, q] == docs[b, k])
        return seen & (q - k < window) if window is not None else seen
    B, T = docs.shape
    return create_block_mask(visible, B, None, T, T, device=docs.device)


def make_masks(docs, k_docs, past, windows, flex):
    """Kind -> mask for each window in windows ({'L': tensor or None, 'S': ...}); docs (B, Tq) and k_docs
    (B, Tk) are document ids (all zeros when documents are not masked). flex: BlockMasks (no cache only)."""
    if flex:
        return {kind: block_mask(docs, w) for kind, w in windows.items()}
    return {kind: dense_mask(docs, k_docs, past, w) for kind, w in windows.items()}


@torch.compiler.assume_constant_result  # called inside the compiled forward: a constant there (an lru_cache
def _has_triton():                       # wrapper made dynamo warn on the H200, 2026-12-04)
    return importlib.util.find_spec("triton") is not None


def flex_runs(device):
    """(True, '') where FlexAttention's Triton kernels run (CUDA with Triton, not Windows), else (False, why): the
    dense mask is used there, the same attention at O(T^2) memory per row."""
    if device.type != "cuda":
        return False, f"{device.type} has no FlexAttention kernels (the dense mask is the fast form there)"
    if os.name == "nt" or not _has_triton():
        return False, "FlexAttention needs Triton, which this machine lacks (Windows, or not installed)"
    return True, ""


def flex_options(device):
    """Triton tile sizes for FlexAttention on this device: smaller ones where shared memory is small."""
    if device.type != "cuda":
        return None
    smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return dict(SMALL_SMEM_TILES) if smem < SMALL_SMEM_BYTES else None


def attend(q, k, v, mask, past, dropout_p):
    """Attention of q (B, nh, Tq, hs) over k, v (B, nh, past + Tq, hs). mask None: plain causal; a BlockMask:
    FlexAttention (no dropout there: dense masks are used for training with dropout); else a dense bool mask."""
    global _flex
    T = q.size(2)
    if mask is None:
        if past == 0:  # flash / memory-efficient kernels when available (Dao et al. 2022)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        if T == 1:  # one new query sees every cached key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        # new query i sits at position past + i and may see keys 0 .. past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    from torch.nn.attention.flex_attention import flex_attention
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        if _flex is None:
            _flex = torch.compile(flex_attention, dynamic=False)
        return _flex(q, k, v, block_mask=mask, kernel_options=flex_options(q.device))
    return flex_attention(q, k, v, block_mask=mask, kernel_options=flex_options(q.device))
