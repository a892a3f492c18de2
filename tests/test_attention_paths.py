"""The attention paths a GPU takes, checked where a CPU can see them (issue 36): the BlockMask built from block
bounds (never T x T positions) and the block-granular windows against the dense mask; kernel tiles that fit a
99 KB card; q, k and v in one dtype under autocast; evals and uncached samples that reach compiled FlexAttention in
a few shapes only; selective checkpointing that keeps the attention output."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gptlib import attention, evals, runtime
from model import GPT, GPTConfig

EOT = 7
RTX_4070_SMEM = 101376  # shared_memory_per_block_optin of sm_86/sm_89 cards (RTX 30xx/40xx): 99 KB
A100_SMEM = 166912


def rows(B, T, starts):
    idx = torch.randint(8, 64, (B, T), generator=torch.Generator().manual_seed(1))
    for b, at in starts:
        idx[b, at] = EOT
    return idx


@pytest.mark.parametrize("block", [0, 128, 256])
def test_the_block_bounds_mask_equals_the_dense_one(block):
    """T = 3 tiles of 128, documents across tile edges; token windows and block-granular ones (and one shorter
    than a block, as at the start of a warmup: the query's own block stays visible)."""
    torch.manual_seed(0)
    B, nh, T, hs = 2, 2, 384, 16
    q, k, v = (torch.randn(B, nh, T, hs) for _ in range(3))
    docs, _ = attention.doc_layout(rows(B, T, [(0, 0), (0, 100), (0, 129), (0, 300), (1, 250)]), EOT)
    windows = [None, torch.tensor(64), torch.tensor(128), torch.tensor(256), 384] if block else \
        [None, torch.tensor(17), torch.tensor(200), 500]
    for window in windows:
        bm = attention.block_mask(docs, window, block)
        assert bm.BLOCK_SIZE == (128, 128)
        dense = attention.attend(q, k, v, attention.dense_mask(docs, docs, 0, window, block), 0, 0.0)
        flex = attention.attend(q, k, v, bm, 0, 0.0)
        assert (dense - flex).abs().max() < 1e-5, window


def test_a_block_window_sees_whole_blocks():
    docs = torch.zeros(1, 512, dtype=torch.long)
    mask = attention.dense_mask(docs, docs, 0, torch.tensor(256), block=128)[0, 0]  # 2 blocks of 128
    assert mask[300, 128] and mask[300, 255] and not mask[300, 127]  # block 2 sees blocks 1 and 2 whole
    assert mask[383, 128] and not mask[384, 255]
    token = attention.dense_mask(docs, docs, 0, torch.tensor(256))[0, 0]
    assert token[300, 45] and not token[300, 44]


@pytest.mark.parametrize("head_size", [64, 128])
def test_kernel_tiles_fit_a_99_kb_card(head_size):
    options = attention.flex_options(RTX_4070_SMEM, head_size, elem_bytes=2)
    fwd = (options["BLOCK_M"], options["BLOCK_N"], options["fwd_num_stages"])
    bwd = tuple(options[k] for k in ("BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2", "bwd_num_stages"))
    for tiles in (fwd, bwd):
        assert attention.smem_bytes(tiles, head_size, 2) <= RTX_4070_SMEM - attention.SMEM_MARGIN
    # torch's own sm_8x forward default (64 x 64 in 3 stages) does not fit at head size 128: ~112 KB
    assert attention.smem_bytes((64, 64, 3), 128, 2) > RTX_4070_SMEM
    assert attention.flex_options(A100_SMEM, head_size) is None  # big cards keep torch's choices


def test_padded_lengths_are_few():
    lengths = {attention.padded_length(n, 1024, masked=True) for n in range(1, 1025)}
    assert lengths == {128, 256, 512, 1024}
    assert attention.padded_length(37, 1024, masked=False) == 37  # nothing compiled: nothing padded
    assert attention.padded_length(5, 64, masked=True) == 64


def test_q_k_and_v_share_a_dtype_under_autocast(monkeypatch):
    """A value embedding (fp32 table) mixed into bf16 values made v fp32 under autocast, which FlexAttention before
    torch 2.11 refuses (pytorch#165468); SDPA casts its inputs itself, so the dtypes are caught where attention is
    called."""
    seen, real = [], attention.attend
    monkeypatch.setattr("model.attend", lambda q, k, v, *a: seen.append((q.dtype, k.dtype, v.dtype)) or real(q, k, v, *a))
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=64, vocab_size=256, value_embeds=1,
                      value_residual=True, doc_mask=True, eot_token=EOT, attn_window=16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(rows(2, 64, [(0, 0)]), rows(2, 64, []))
    assert len(seen) == 3 and all(s == (torch.bfloat16,) * 3 for s in seen), seen


class Count(TorchDispatchMode):
    """How many times an attention forward runs (an outer mode sees what checkpointing really recomputes)."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.forwards += "scaled_dot_product" in str(func) and "backward" not in str(func)
        return func(*args, **(kwargs or {}))


def test_selective_checkpointing_keeps_the_attention_output():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=256, doc_mask=True, eot_token=EOT,
                    attn_window=16, pos_emb="rope", norm="rmsnorm")
    torch.manual_seed(0)
    m, idx = GPT(cfg), rows(2, 64, [(0, 0), (1, 30)])
    recomputed = {}
    for mode in ("selective", "full"):
        wrapped = runtime.checkpoint_blocks(copy.deepcopy(m), mode)
        _, loss = wrapped(idx, idx)
        with Count() as c:
            loss.backward()
        recomputed[mode] = c.forwards
    assert recomputed == {"selective": 0, "full": 2}  # full reruns each block's attention; selective none
    # FlexAttention's op (CUDA; no backward on CPU) is kept as SDPA's is: the policy says MUST_SAVE for it
    from torch.utils.checkpoint import CheckpointPolicy
    assert runtime._keep_matmuls(None, torch.ops.higher_order.flex_attention) == CheckpointPolicy.MUST_SAVE


class Shapes:
    """The shapes that reach compiled FlexAttention (one graph each, dynamic=False)."""

    def __init__(self, monkeypatch):
        self.seen = set()
        real = attention.attend

        def attend(q, k, v, mask, past, dropout_p):
            if mask is not None and not isinstance(mask, torch.Tensor):
                self.seen.add(tuple(q.shape))
            return real(q, k, v, mask, past, dropout_p)
        monkeypatch.setattr("model.attend", attend)


def speedrun_model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=512, vocab_size=50304, doc_mask=True,
                      attn_window=256, pos_emb="rope", norm="rmsnorm")).eval()
    m.flex = True  # the CUDA path, forced on the CPU (FlexAttention's forward runs there)
    return m


def test_a_hellaswag_pass_and_an_uncached_sample_reach_flex_in_few_shapes(monkeypatch):
    shapes = Shapes(monkeypatch)
    m = speedrun_model()
    items = [{"ctx": "word " * n, "endings": ["a b", "c d e", "f", "g h i j"], "label": 0} for n in (3, 40, 150, 300)]
    evals.hellaswag(m, "cpu", torch.autocast("cpu", enabled=False), items=items, batch_items=3)
    assert len(shapes.seen) <= 2, shapes.seen  # batches of 3 and 1 item, rows of 6 to 305 tokens
    shapes.seen.clear()
    m.generate(torch.full((1, 5), EOT), 140, temperature=0, use_cache=False)
    assert shapes.seen == {(1, 2, 128, 16), (1, 2, 256, 16)}, shapes.seen  # 5..144 tokens: 2 lengths, not 140


@pytest.mark.slow  # two CPU compiles of FlexAttention (~6 s each)
def test_compiled_flex_makes_one_graph_per_padded_shape(monkeypatch):
    from torch._dynamo.utils import counters
    monkeypatch.setattr(attention, "COMPILE_OFF_CUDA", True)
    monkeypatch.setattr(attention, "_flex", None)
    torch._dynamo.reset()
    m = speedrun_model()
    before = counters["stats"]["unique_graphs"]
    uncached = m.generate(torch.full((1, 5), EOT), 140, temperature=0, use_cache=False)
    assert counters["stats"]["unique_graphs"] - before <= 2
    m.flex = None  # the dense mask with the KV cache: the same greedy tokens
    assert torch.equal(m.generate(torch.full((1, 5), EOT), 140, temperature=0), uncached)


def test_the_planner_counts_the_masks_of_each_path():
    """At 8,192 tokens a dense mask per window kind is 64 MiB kept for the backward (and 3 x 64 MiB of
    temporaries); block bounds are a few KB. The plan's step and eval figures carry them (issue 36)."""
    from gptlib import memory
    from gptlib.settings import load_config
    from gptlib.train_settings import TrainConfig
    from conftest import REPO
    cfg = load_config(TrainConfig, [str(REPO / "config" / "train_gpt2_124m_4070.py"),
                                    str(REPO / "config" / "recipe_speedrun.py")])
    c = GPTConfig(**{k: getattr(cfg, k) for k in GPTConfig.__dataclass_fields__})
    assert memory.mask_bytes(c, 1, 8192, flex=False) == 2 * 8192 ** 2 + 3 * 8192 ** 2  # two kinds, L and S
    assert memory.mask_bytes(c, 1, 8192, flex=True) < 2 ** 20
    assert memory.mask_bytes(GPTConfig(), 8, 1024, flex=False) == 0  # plain causal: no mask at all
    with torch.device("meta"):
        model = GPT(c)
    dense, flex = (memory.step_bytes(model, cfg, "bfloat16", flex=f)["activations"] for f in (False, True))
    assert dense - flex == memory.mask_bytes(c, 1, 8192, False) - memory.mask_bytes(c, 1, 8192, True)
    assert memory.eval_bytes(model, cfg, "bfloat16", flex=False) - memory.eval_bytes(model, cfg, "bfloat16") > 5 * 2 ** 26 - 2 ** 20
