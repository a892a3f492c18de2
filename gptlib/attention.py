"""Which keys each query may see, and the attention call that applies it (model.py's attention uses these).

    doc_layout(idx, eot, prev)          document ids and positions within the document, from the EOT tokens
    make_masks(...)                     per window kind, a mask: document-causal, sliding-window, or both
    attend(q, k, v, mask, past, p)      scaled dot-product attention under one of those masks
    padded_length(n, limit, ...)        the row length an eval or an uncached sample pads to (few compiled shapes)

Two exact forms of the same mask (issue 26):
- a FlexAttention BlockMask (Triton kernels that skip the blocks no query sees: long rows cost what their
  windows and documents cost, not T^2), used on CUDA. It is built from each 128-token block's first and last
  document id (BlockMask.from_kv_blocks, as modded-nanogpt's records build theirs from record #16 on), so no
  T x T positions are ever evaluated (torch's create_block_mask did, with ~1 GB of int64 temporaries at 8,192);
- a dense boolean (B, 1, Tq, Tk) mask for SDPA everywhere else. On CPU (no Triton) FlexAttention runs either
  as an unfused reference that builds the whole score matrix (0.90 s against SDPA's 0.005 s for 2 x 4 heads x
  512 tokens, torch 2.13, 2-core EPYC) or through inductor's C++ template, which costs a 15 s compile and was no
  faster (0.006 s): the dense mask is the CPU form. tests/test_speedrun.py checks the forms agree within 1e-5.
A window counts tokens (a query sees its `window` latest keys), or with block > 0 whole blocks of that many tokens
(record #16's block-wise window: a query sees the blocks its window reaches, each whole, up to itself).
Nothing here knows the model: it takes tokens and tensors, returns masks and tensors.
"""
import importlib.util
import os

import torch
import torch.nn.functional as F

FLEX_BLOCK = 128  # FlexAttention's block: a BlockMask says which 128 x 128 tiles of (query, key) hold a visible pair
SMALL_SMEM_BYTES = 160 * 1024  # below this much shared memory per block (RTX 30xx/40xx: 99 KB; A100/H100: 164-228 KB)
SMEM_MARGIN = 4 * 1024  # shared memory Triton's kernels use beside the tiles (reductions, layouts): kept free
# tile choices for cards under SMALL_SMEM_BYTES, largest first: (BLOCK_M, BLOCK_N, num_stages) forward, and
# (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, num_stages) backward; torch's own sm_8x defaults are A100's (164 KB):
# at head size 128 in bf16 its forward's 64 x 64 tiles in 3 stages need ~112 KB, over a 4070's 99 KB
# (pytorch/pytorch#133254 for the 3090's "out of resource: shared memory")
FWD_TILES = [(128, 64, 3), (64, 64, 3), (64, 64, 2), (64, 32, 2), (32, 32, 2), (32, 32, 1)]
BWD_TILES = [(64, 64, 64, 64, 3), (32, 64, 64, 32, 3), (32, 64, 64, 32, 2), (32, 32, 32, 32, 2), (16, 32, 32, 16, 1)]

_flex = None  # torch.compile(flex_attention), made on first use: eager FlexAttention is an unfused reference
COMPILE_OFF_CUDA = False  # compile FlexAttention on a CPU too, where a test forces it (inductor's C++ template)


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


def dense_mask(q_docs, k_docs, past, window, block=0):
    """(B, 1, Tq, Tk) bool: query i (at absolute index past + i) sees key j when j <= past + i, when it is within
    the window (window None: any distance; tokens, or with block whole blocks of that many) and, with docs given
    ((B, Tq) and (B, Tk)), in the same document. Only boolean (Tq, Tk) temporaries: no int64 distance matrix."""
    Tq, Tk = q_docs.size(1), k_docs.size(1)
    q_at = torch.arange(past, past + Tq, device=q_docs.device)[:, None]  # (Tq, 1)
    k_at = torch.arange(Tk, device=q_docs.device)[None, :]  # (1, Tk)
    mask = k_at <= q_at  # (Tq, Tk)
    if window is not None:
        mask = mask & (k_at // block > q_at // block - _blocks(window, block) if block else k_at > q_at - window)
    return (mask[None] & (q_docs[:, :, None] == k_docs[:, None, :]))[:, None]  # (B, 1, Tq, Tk)


def _blocks(window, block):
    """The whole blocks a window of `window` tokens (an int or a 0-d tensor) spans, and at least the query's own (a
    short window at the start of a warmup is under one block: record #18 keeps each query's own block visible)."""
    return max(window // block, 1) if isinstance(window, int) else torch.clamp(window // block, min=1)


def block_mask(docs, window, block=0):
    """The same mask as dense_mask(docs, docs, 0, window, block) as a FlexAttention BlockMask, for rows of docs
    (B, T): from the block bounds when T is whole 128-token blocks, else from every position (create_block_mask)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(b, h, q, k):
        seen = (k <= q) & (docs[b, q] == docs[b, k])
        if window is None:
            return seen
        return seen & (k // block > q // block - _blocks(window, block) if block else q - k < window)
    B, T = docs.shape
    if T % FLEX_BLOCK == 0 and block % FLEX_BLOCK == 0:
        return _from_bounds(docs, window, block, visible)
    return create_block_mask(visible, B, None, T, T, device=docs.device)


def _from_bounds(docs, window, block, visible):
    """A BlockMask from each 128-token block's first and last document id ((B, nb) each; ids ascend along a row):
    which (query block, key block) tiles hold some visible pair (partial: mask_mod decides each pair) and which
    hold only visible pairs (full: no mask_mod), each a (nb, nb) comparison per row."""
    from torch.nn.attention.flex_attention import BlockMask
    B, T = docs.shape
    nb, n = T // FLEX_BLOCK, FLEX_BLOCK
    low, high = docs[:, ::n], docs[:, n - 1::n]  # (B, nb): the first and last token's document of each block
    qb = torch.arange(nb, device=docs.device)[:, None]  # (nb, 1)
    kb = torch.arange(nb, device=docs.device)[None, :]  # (1, nb)
    some = (kb <= qb) & (low[:, :, None] <= high[:, None, :]) & (low[:, None, :] <= high[:, :, None])  # (B, nb, nb)
    every = (kb < qb) & (low[:, :, None] == high[:, None, :]) & (low[:, None, :] == high[:, :, None])
    if window is not None:
        if block:  # whole blocks of `block` tokens (whole tiles): those fewer blocks away than the window holds
            near = kb // (block // n) > qb // (block // n) - _blocks(window, block)
            some, every = some & near, every & near
        else:  # tokens: the nearest pair of the two tiles within the window, or all of their pairs
            some = some & ((qb - kb) * n - (n - 1) < window)
            every = every & ((qb - kb) * n + (n - 1) < window)
    partial = some & ~every

    def ordered(dense):  # (B, nb, nb) bool -> (counts (B, 1, nb), the key blocks first in each row (B, 1, nb, nb))
        counts = dense.sum(dim=-1, dtype=torch.int32)
        return counts[:, None].contiguous(), dense.int().argsort(dim=-1, descending=True, stable=True).int()[:, None].contiguous()
    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(every)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=n, mask_mod=visible)


def make_masks(docs, k_docs, past, windows, flex, block=0):
    """Kind -> mask for each window in windows ({'L': tensor or None, 'S': ...}); docs (B, Tq) and k_docs
    (B, Tk) are document ids (all zeros when documents are not masked). flex: BlockMasks (no cache only)."""
    if flex:
        return {kind: block_mask(docs, w, block) for kind, w in windows.items()}
    return {kind: dense_mask(docs, k_docs, past, w, block) for kind, w in windows.items()}


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


def padded_length(n, limit, masked):
    """The length a row of n tokens is padded to before a forward that may go through compiled FlexAttention
    (masked: the model has document masks or windows): a power of two times 128, at most limit, so evals of rows of
    every length and an uncached sample make a few compiled graphs (log2(limit / 128) + 1), not one per length
    (dynamo gives up after 8 and runs the unfused reference). n itself where no mask is compiled."""
    if not masked or limit <= FLEX_BLOCK:
        return limit if masked else n
    size = FLEX_BLOCK
    while size < n:
        size *= 2
    return min(size, limit)


def smem_bytes(tiles, head_size, elem_bytes):
    """Shared memory a FlexAttention kernel's tiles need, as Triton lays them out (an estimate: the tiles kept
    whole plus num_stages buffers of the streamed ones): forward (BLOCK_M, BLOCK_N, stages): Q kept, K and V
    streamed; backward (M1, N1, M2, N2, stages): dK/dV keep K and V of N1 rows and stream Q and dO of M1, dQ keeps
    Q and dO of M2 and streams K and V of N2; the larger of the two."""
    D = head_size * elem_bytes
    if len(tiles) == 3:
        m, n, stages = tiles
        return m * D + stages * 2 * n * D
    m1, n1, m2, n2, stages = tiles
    return max(2 * n1 * D + stages * 2 * m1 * D, 2 * m2 * D + stages * 2 * n2 * D)


def flex_options(smem_per_block, head_size, elem_bytes=2):
    """FlexAttention's kernel options for a card with smem_per_block bytes of shared memory per block: None where
    torch's own choices fit (160 KB and up), else the largest forward and backward tiles, with their num_stages,
    that fit in it less SMEM_MARGIN (tests: 99 KB at head sizes 64 and 128)."""
    if smem_per_block >= SMALL_SMEM_BYTES:
        return None
    budget = smem_per_block - SMEM_MARGIN
    fwd = next((t for t in FWD_TILES if smem_bytes(t, head_size, elem_bytes) <= budget), FWD_TILES[-1])
    bwd = next((t for t in BWD_TILES if smem_bytes(t, head_size, elem_bytes) <= budget), BWD_TILES[-1])
    return {"BLOCK_M": fwd[0], "BLOCK_N": fwd[1], "fwd_num_stages": fwd[2], "BLOCK_M1": bwd[0], "BLOCK_N1": bwd[1],
            "BLOCK_M2": bwd[2], "BLOCK_N2": bwd[3], "bwd_num_stages": bwd[4]}


SMEM_ENV = "GPT2KIT_FLEX_SMEM_BYTES"  # set: the shared memory to size the tiles for (a big card tries a 4070's tiles)


def _options(q):
    """flex_options for q's device (None off CUDA)."""
    if q.device.type != "cuda":
        return None
    smem = int(os.environ.get(SMEM_ENV) or torch.cuda.get_device_properties(q.device).shared_memory_per_block_optin)
    return flex_options(smem, q.size(-1), q.element_size())


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
    if torch.compiler.is_compiling() or (q.device.type != "cuda" and not COMPILE_OFF_CUDA):
        return flex_attention(q, k, v, block_mask=mask, kernel_options=_options(q))  # in the model's graph, or the reference
    if _flex is None:  # an eager model (evals, sampling): FlexAttention compiled alone, once per shape
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex(q, k, v, block_mask=mask, kernel_options=_options(q))
