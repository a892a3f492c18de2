"""GPT-2 in one file, with nanoGPT's parameter names so checkpoints interoperate, and the switches of a
modern recipe, each off by default so the defaults are exactly GPT-2.

References:
1) GPT-2 paper, "Language Models are Unsupervised Multitask Learners" (Radford et al. 2019)
2) OpenAI's GPT-2 TensorFlow code: https://github.com/openai/gpt-2/blob/master/src/model.py
3) The switches (docs/recipes.md, "The modern recipe"): rotary positions (Su et al. 2021, RoFormer), RMSNorm
   (Zhang & Sennrich 2019), QK-norm (Dehghani et al. 2023), ReLU^2 (So et al. 2021, Primer), zero-init
   projections and head, and logit soft-capping (Gemma 2, 2024), as combined by modded-nanogpt.
4) The speedrun switches (docs/recipes.md, "Which recipe"; KellerJordan/modded-nanogpt records #9-#18): document masks and
   sliding windows (gptlib/attention.py), value residual (Zhou et al. 2024), embedding and U-net skips, value
   embeddings.
Only the model lives here: optimizer policy, FLOP/MFU accounting and hardware tables are elsewhere.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptlib.attention import attend, doc_layout, flex_runs, make_masks, padded_length  # masks, attention
from gptlib.head_loss import head_loss, head_row_losses  # the loss op (chunked head + cross-entropy)

INIT_STD = 0.02  # GPT-2's weight init std (OpenAI's model.py, `normal_initializer(0.02)`)

@dataclass
class GPTConfig:
    # each setting's valid range is in its metadata, which gptlib/settings.py checks for every command
    # --- model (model.py: GPT-2 by default; config/recipe_modern.py and config/recipe_speedrun.py switch)
    block_size: int = field(default=1024, metadata={"ge": 1})  # longest context the model can see
    vocab_size: int = field(default=50304, metadata={"ge": 1})  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = field(default=12, metadata={"ge": 1})  # number of transformer blocks
    n_head: int = field(default=12, metadata={"ge": 1})  # attention heads per block
    n_embd: int = field(default=768, metadata={"ge": 1})  # width of the residual stream
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})  # dropout probability (0 for pre-training, 0.1+ for fine-tuning)
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2; False is a bit faster and better
    tie_weights: bool = True  # share wte and lm_head weights, as GPT-2 (Press & Wolf 2017)
    pos_emb: str = field(default="learned", metadata={"choices": ["learned", "rope"]})  # positions: a learned table wpe (GPT-2) or rotary (RoPE)
    rope_base: float = field(default=10000.0, metadata={"gt": 1})  # RoPE: base of the rotation frequencies
    norm: str = field(default="layernorm", metadata={"choices": ["layernorm", "rmsnorm"]})  # LayerNorm (GPT-2) or RMSNorm
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    mlp_act: str = field(default="gelu", metadata={"choices": ["gelu", "gelu_exact", "relu2"]})  # MLP activation: tanh GELU (GPT-2), exact erf GELU (nanoGPT's nn.GELU()) or ReLU^2
    zero_init: bool = False  # start the residual output projections and the head at zero (needs tie_weights=False)
    logit_softcap: float = field(default=0.0, metadata={"ge": 0})  # squash logits smoothly into (-cap, cap); 0: off
    # --- model: the speedrun's switches (config/recipe_speedrun.py; docs/recipes.md), each off by default
    doc_mask: bool = False  # attention stays inside each document (each starts with eot_token) and positions restart there
    eot_token: int = field(default=50256, metadata={"ge": 0})  # the token that starts every document in the shards (GPT-2's <|endoftext|>)
    attn_window: int = field(default=0, metadata={"ge": 0})  # sliding-window attention: a query sees at most this many latest tokens (0: all); train.py may grow it (window_start)
    window_pattern: str = field(default="L", metadata={"pattern": "[LS]+"})  # per block, L: attn_window, S: half of it; tiled over the first half of the blocks, mirrored over the second
    attn_block: int = field(default=0, metadata={"ge": 0})  # windows in whole blocks of this many tokens (record #16 on: 128): a query sees every block its window reaches, whole; 0: token by token
    value_residual: bool = False  # mix the first block's attention values into every later block's (learned weights)
    x0_skip: bool = False  # feed the normalised token embedding into every block's input (learned weights)
    unet_skips: bool = False  # blocks of the second half add the outputs of the first half in mirror order (learned weights)
    value_embeds: int = field(default=0, metadata={"ge": 0})  # extra token-embedding tables mixed into the values of the first and last this-many blocks (0: none)
    bigram_embeds: int = field(default=0, metadata={"ge": 0})  # rows of a table of hashed (previous, current) token pairs added to every block's input (record #62: 5 x vocab_size); 0: none
    key_offset: bool = False  # the long-window ('L') blocks' keys take their slowest rotary channels (the 2nd and 4th quarters) from the token before (record of 2025-12-14, "partial key offset"): one block can match a token's predecessor, an induction head's step (needs pos_emb='rope')
    bigram_signs: int = field(default=0, metadata={"ge": 0})  # rows of a fixed table of random +-1 vectors multiplied into each pair's row, picked by previous xor current (record #83: 8192): pairs that share a row add with different signs; 0: none

    def not_gpt2(self):
        """The settings that make this model compute something other than GPT-2 (so OpenAI's weights, or
        transformers' GPT2LMHeadModel, cannot stand in for it), as 'key=value' strings."""
        gpt2 = GPTConfig()
        return [f"{k}={getattr(self, k)!r}" for k in ("pos_emb", "norm", "qk_norm", "mlp_act", "logit_softcap")
                + SPEEDRUN_KEYS if getattr(self, k) != getattr(gpt2, k)]

    def speedrun(self):
        """The speedrun switches this model uses, as 'key=value' strings (no export target but its own code)."""
        gpt2 = GPTConfig()
        return [f"{k}={getattr(self, k)!r}" for k in SPEEDRUN_KEYS if getattr(self, k) != getattr(gpt2, k)]

    def windows(self):
        """Each block's window kind, 'L' or 'S': window_pattern tiled over the first half of the blocks and
        mirrored over the second (the record's long-short pattern 'LSSSLS' gives LSSSLS SLSSSL for 12 blocks)."""
        half = (self.n_layer + 1) // 2
        first = (self.window_pattern * half)[:half]
        return first + first[::-1][self.n_layer % 2:]

    def value_embed_layers(self):
        """Block index -> the value-embedding table it mixes in: tables 0..k-1 in the first k blocks and again in
        the last k (the record's 012 ... 012 sharing)."""
        k, n = self.value_embeds, self.n_layer
        return {**{i: i for i in range(k)}, **{n - k + i: i for i in range(k)}} if k else {}

    def problems(self):
        """Why these settings cannot build a model, as messages (empty when they can)."""
        out = []
        if self.n_embd % self.n_head:
            out.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; each head gets n_embd/n_head "
                       f"channels, so pick values that divide")
        elif self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            out.append(f"pos_emb='rope' rotates channel pairs, but n_embd/n_head={self.n_embd // self.n_head} is odd; "
                       f"pick an even head size")
        if self.zero_init and self.tie_weights:
            out.append("zero_init starts the head at zero, which would zero the tied token embedding too; "
                       "set tie_weights=False")
        if 2 * self.value_embeds > self.n_layer:
            out.append(f"value_embeds={self.value_embeds} puts a table in the first and the last {self.value_embeds} "
                       f"blocks, which needs n_layer >= {2 * self.value_embeds}; use value_embeds <= {self.n_layer // 2}")
        if self.key_offset and self.pos_emb != "rope":
            out.append("key_offset shifts keys' slowest rotary channels, which pos_emb='learned' does not have; set "
                       "--pos_emb=rope, or --key_offset=False")
        if self.bigram_signs and not self.bigram_embeds:
            out.append(f"bigram_signs={self.bigram_signs} signs the rows of the bigram table, but bigram_embeds=0; set "
                       f"--bigram_embeds (the record's 5 x vocab_size), or --bigram_signs=0")
        if self.bigram_embeds == 1:
            out.append("bigram_embeds=1 leaves no row for the pairs (the last row is kept for a row's first token); "
                       "use bigram_embeds >= 2 (the record: 5 x vocab_size), or 0")
        if self.attn_block and self.attn_window % self.attn_block:
            out.append(f"attn_window={self.attn_window} is not a whole number of attn_block={self.attn_block} blocks; "
                       f"use --attn_window={max(1, round(self.attn_window / self.attn_block)) * self.attn_block}")
        if "S" in self.window_pattern and self.attn_window < 2:
            out.append(f"window_pattern={self.window_pattern!r} gives some blocks half of attn_window, but attn_window="
                       f"{self.attn_window}; set attn_window (e.g. 1792, the record's) or window_pattern='L'")
        return out


SPEEDRUN_KEYS = ("doc_mask", "attn_window", "attn_block", "value_residual", "x0_skip", "unet_skips", "value_embeds",
                 "bigram_embeds", "bigram_signs", "key_offset")
BIGRAM_MULTS = (36313, 27191)  # record #62's multipliers for the current and the previous token: pairs spread over the rows


SIGN_SEED = 83  # the sign table is drawn from this seed: the same in every process, never saved


def bigram_rows(idx, rows, prev=None, eot=None, signs=0):
    """(the table row of each (previous, current) token pair of idx (B, T), and with signs its sign row): a hash of
    the two ids into rows - 1 rows; a token with no previous one (a row's first, unless prev (B,) gives the token
    before it; with eot, a document's first: documents stay apart, where the record let them meet) takes the last
    row and sign row 0; the sign row is (previous xor current) % signs (record #83)."""
    before = torch.cat([torch.full_like(idx[:, :1], -1) if prev is None else prev[:, None], idx[:, :-1]], dim=1)
    if eot is not None:
        before = torch.where(idx == eot, -1, before)
    hashed = torch.bitwise_xor(BIGRAM_MULTS[0] * idx, BIGRAM_MULTS[1] * before) % (rows - 1)  # (B, T)
    sign_rows = torch.where(before < 0, 0, torch.bitwise_xor(before, idx) % signs) if signs else None
    return torch.where(before < 0, rows - 1, hashed), sign_rows


class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer, for incremental decoding."""

    def __init__(self, n_layer):
        self.layers = [None] * n_layer  # layer i -> (k, v), each (B, nh, T_past, hs)
        self.docs = None  # doc_mask: the document id of every cached token (B, T_past)
        self.last_token = None  # bigram_embeds: the last cached token (B,)
        self.last = None  # doc_mask: (doc id, position) of the last cached token, each (B,)
        self.last_keys = [None] * n_layer  # key_offset: layer i -> the last cached token's keys before the shift (B, 1, nh, hs)

    def __len__(self):
        """Number of cached positions."""
        return self.length(0)

    def length(self, i):
        """Number of positions cached in layer i."""
        return 0 if self.layers[i] is None else self.layers[i][0].size(2)

    def update(self, i, k, v):
        """Append this step's k, v of layer i and return all keys and values so far."""
        if self.layers[i] is not None:
            k = torch.cat([self.layers[i][0], k], dim=2)
            v = torch.cat([self.layers[i][1], v], dim=2)
        self.layers[i] = (k, v)
        return k, v


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): channel pairs of q and k are rotated by an angle that
    grows with the position, so q.k depends on the distance between positions, not on where they are."""

    def __init__(self, head_size, block_size, base):
        super().__init__()
        self.head_size, self.block_size, self.base = head_size, block_size, base
        self.register_buffer("cos", torch.empty(block_size, head_size // 2), persistent=False)  # never in a checkpoint
        self.register_buffer("sin", torch.empty(block_size, head_size // 2), persistent=False)
        self.rope_tables()

    def rope_tables(self):
        """Compute the cos and sin tables (also after a load that made the module on the meta device)."""
        hs, device = self.head_size, self.cos.device if self.cos.device.type != "meta" else None
        inv_freq = self.base ** (-torch.arange(0, hs, 2, dtype=torch.float32, device=device) / hs)  # (hs/2,)
        angles = torch.outer(torch.arange(self.block_size, dtype=torch.float32, device=device), inv_freq)  # (block_size, hs/2)
        self.cos, self.sin = angles.cos(), angles.sin()

    def forward(self, x, pos):
        """x (B, T, ..., hs) rotated to positions pos: an int, the first of T consecutive ones (dim 1), or each
        token's own (B, T) (documents restart at 0)."""
        T, half = x.size(1), x.size(-1) // 2
        if isinstance(pos, int):
            shape = (T,) + (1,) * (x.dim() - 3) + (half,)  # (T, 1, ..., hs/2): broadcast over the dims between
            cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        else:
            shape = tuple(pos.shape) + (1,) * (x.dim() - 3) + (half,)  # (B, T, 1, ..., hs/2)
            cos, sin = self.cos[pos], self.sin[pos]
        cos, sin = cos.to(x.dtype).view(shape), sin.to(x.dtype).view(shape)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def make_norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx, mixes_values=False):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if mixes_values:  # v = a * v + b * (a value embedding, or the first block's v); the record's init: 0.5, 0.5
            self.v_lambdas = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.key_offset = config.key_offset and config.windows()[layer_idx] == "L"  # long windows: induction's

    def _offset_keys(self, k, kv_cache, pos):
        """k (B, T, nh, hs) with its 2nd and 4th quarters of channels (the slowest rotary ones) taken from the token
        before; a row's first token keeps its own (decoding: takes the last cached token's), and so does a
        document's (pos 0: documents stay apart, where the record let them meet)."""
        q1, hs = k.size(-1) // 4, k.size(-1)
        before = torch.cat([k[:, :1] if kv_cache is None or kv_cache.last_keys[self.layer_idx] is None
                            else kv_cache.last_keys[self.layer_idx], k[:, :-1]], dim=1)  # (B, T, nh, hs)
        if kv_cache is not None:
            kv_cache.last_keys[self.layer_idx] = k[:, -1:]
        slow = torch.zeros(hs, dtype=torch.bool, device=k.device)
        slow[q1:2 * q1] = slow[3 * q1:] = True
        if pos is not None:  # (B, T, 1, hs): not at a document's first token
            slow = slow & (pos != 0)[:, :, None, None]
        return torch.where(slow, before, k)

    def forward(self, x, rotary=None, kv_cache=None, pos=None, mask=None, v_mix=None):
        """x (B, T, C) -> (y (B, T, C), this block's values before mixing (B, T, nh, hs)). pos: the tokens'
        positions (None: past .. past + T - 1); mask: gptlib/attention.py's (None: plain causal); v_mix: values
        (B, T, C) mixed into this block's."""
        B, T, C = x.size()
        hs = C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, hs)  # (B, T, 3C) -> (B, T, 3, nh, hs)
        q, k, v = qkv.unbind(2)  # 3 x (B, T, nh, hs)
        past = kv_cache.length(self.layer_idx) if kv_cache is not None else 0
        if self.qk_norm or rotary is not None:  # q and k together: one kernel each, not two, in eager mode (issue 16)
            qk = qkv[:, :, :2]  # (B, T, 2, nh, hs)
            if self.qk_norm:  # bounded attention logits: stable at higher learning rates (Dehghani et al. 2023)
                qk = F.rms_norm(qk, (hs,))
            if rotary is not None:  # new tokens sit at positions past .. past + T - 1, or their documents' ones
                qk = rotary(qk, past if pos is None else pos)
            q, k = qk.unbind(2)
        if self.key_offset:
            k = self._offset_keys(k, kv_cache, pos)
        raw_v = v
        if v_mix is not None:  # value residual (Zhou et al. 2024) or a value embedding: records #9, #14
            # in q's dtype: an fp32 table under autocast made v fp32, which FlexAttention before torch 2.11 refuses
            v = (self.v_lambdas[0] * v + self.v_lambdas[1] * v_mix.view_as(v)).to(q.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, nh, hs) -> (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, past + T, hs)
        y = attend(q, k, v, mask, past, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y)), raw_v


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.relu2 = config.mlp_act == "relu2"
        # GPT-2 used the tanh approximation of GELU; nanoGPT's runs use the exact one (imported checkpoints)
        self.gelu = nn.GELU(approximate="none" if config.mlp_act == "gelu_exact" else "tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)  # ReLU^2: sparse, and better per FLOP (Primer)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 paper section 2.3)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        mixes_values = layer_idx in config.value_embed_layers() or (config.value_residual and layer_idx > 0)
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx, mixes_values)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        if config.x0_skip:  # input = a * x + b * x0, starting as x alone (record #9's init: 1, 0)
            self.x0_lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x, rotary=None, kv_cache=None, x0=None, **attn):
        """x (B, T, C) -> (x, the attention's values before mixing); attn: CausalSelfAttention's pos, mask, v_mix."""
        if x0 is not None:
            x = self.x0_lambdas[0] * x + self.x0_lambdas[1] * x0
        y, v = self.attn(self.ln_1(x), rotary, kv_cache, **attn)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return x, v


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.problems():
            raise ValueError(config.problems()[0])
        self.config = config
        layers = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        if config.value_embeds:  # token tables mixed into the values (record #14): memory, not FLOPs (gathers)
            layers["vte"] = nn.ModuleList(nn.Embedding(config.vocab_size, config.n_embd) for _ in range(config.value_embeds))
        if config.bigram_embeds:  # hashed token pairs (record #62), zero at the start: memory, not FLOPs
            layers["bte"] = nn.Embedding(config.bigram_embeds, config.n_embd)
        layers.update(drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                      ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(layers)
        if config.unet_skips:  # block n/2 + i adds block n/2 - 1 - i's output times a weight starting at 1 (record #11)
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        if config.bigram_embeds:  # block i's input gets this weight times the pair's row (the record's init: 0.1)
            self.bigram_lambdas = nn.Parameter(torch.full((config.n_layer,), 0.1))
        if config.bigram_signs:  # a fixed random +-1 table, drawn on the CPU from SIGN_SEED (a meta model too)
            signs = torch.randn(config.bigram_signs, config.n_embd, generator=torch.Generator().manual_seed(SIGN_SEED),
                                device="cpu").sign()
            self.register_buffer("bigram_sign_table", signs, persistent=False)
        self.flex = None  # FlexAttention block masks: None: on CUDA (gptlib/attention.py says why); True/False: forced
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size, config.rope_base) \
            if config.pos_emb == "rope" else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or (name == "lm_head.weight" and config.zero_init):
                if config.zero_init:  # every block starts as the identity, the model as the unigram-free guess
                    nn.init.zeros_(p)
                else:  # GPT-2 section 2.3: residual projections scaled by 1/sqrt(N), N = 2 residual layers per block
                    nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))
        for table in self.transformer.vte if config.value_embeds else ():
            nn.init.normal_(table.weight)  # std 1, nn.Embedding's default, as the record: mixed in unnormalised
        if config.bigram_embeds:
            nn.init.zeros_(self.transformer.bte.weight)  # the pairs start with no effect (record #62)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def get_num_params(self, non_embedding=False):
        """Number of parameters (a tied wte/lm_head counted once). non_embedding leaves out
        the token and position embeddings and an untied lm_head, the count used in scaling laws."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if self.lm_head.weight is not self.transformer.wte.weight:  # (a late-untied head shares it at first)
                n -= self.lm_head.weight.numel()
            n -= self.extra_embed_params()
        return n

    def extra_embed_params(self):
        """Parameters of the value-embedding and bigram tables: memory and optimizer state, but gathers, not FLOPs."""
        tables = list(self.transformer.vte) if "vte" in self.transformer else []
        tables += [self.transformer.bte] if "bte" in self.transformer else []
        return sum(t.weight.numel() for t in tables)

    def _hidden(self, idx, kv_cache=None, window=None):
        """The final normalised hidden states (B, T, C) of tokens idx (B, T) that follow the cached ones; window:
        the long attention window of this call (an int or a 0-d tensor: train.py grows it), None: attn_window."""
        past = len(kv_cache) if kv_cache is not None else 0
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"sequence length {past + T} exceeds block_size {self.config.block_size}; crop the input")
        pos, masks = self._layout(idx, kv_cache, window)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device) if pos is None else pos)
        x = self.transformer.drop(x)
        cfg, x0 = self.config, None
        if cfg.x0_skip:  # every block sees the normalised embedding too (record #9)
            x = x0 = F.rms_norm(x, (x.size(-1),))
        ve = [table(idx) for table in self.transformer.vte] if cfg.value_embeds else []  # each (B, T, C)
        pairs = self._bigrams(idx, kv_cache) if cfg.bigram_embeds else None  # (B, T, C)
        ve_at, kinds, half = cfg.value_embed_layers(), cfg.windows(), cfg.n_layer // 2
        skips, v1 = [], None
        for i, block in enumerate(self.transformer.h):
            if cfg.unet_skips and i >= cfg.n_layer - half:  # U-net: the second half adds the first's outputs, mirrored
                x = x + self.skip_weights[i - (cfg.n_layer - half)] * skips.pop()
            if pairs is not None:
                x = x + self.bigram_lambdas[i] * pairs
            v_mix = ve[ve_at[i]] if i in ve_at else v1 if cfg.value_residual else None
            x, v = block(x, self.rotary, kv_cache, x0, pos=pos, mask=masks and masks[kinds[i]], v_mix=v_mix)
            v1 = v if i == 0 else v1
            if cfg.unet_skips and i < half:
                skips.append(x)
        return self.transformer.ln_f(x)

    def _bigrams(self, idx, kv_cache=None):
        """The bigram table's rows (B, T, C) for tokens idx after the cached ones; notes the last token in kv_cache."""
        prev = kv_cache.last_token if kv_cache is not None and len(kv_cache) else None
        if kv_cache is not None:
            kv_cache.last_token = idx[:, -1]
        cfg = self.config
        rows, signs = bigram_rows(idx, cfg.bigram_embeds, prev, cfg.eot_token if cfg.doc_mask else None, cfg.bigram_signs)
        pairs = self.transformer.bte(rows)  # (B, T, C)
        return pairs if signs is None else pairs * self.bigram_sign_table[signs].to(pairs.dtype)

    def _layout(self, idx, kv_cache=None, window=None):
        """(positions (B, T), or None for past .. past + T - 1; window kind -> mask, or None for plain causal
        attention) of tokens idx (B, T) after the cached ones under the long window `window` (None: attn_window);
        notes their documents in kv_cache."""
        cfg = self.config
        if not cfg.doc_mask and not cfg.attn_window:
            return None, None
        past = len(kv_cache) if kv_cache is not None else 0
        if cfg.doc_mask:
            docs, pos = doc_layout(idx, cfg.eot_token, kv_cache.last if past else None)
        else:
            docs, pos = torch.zeros_like(idx), None
        k_docs = docs
        if kv_cache is not None:
            k_docs = torch.cat([kv_cache.docs, docs], dim=1) if past else docs  # (B, past + T)
            kv_cache.docs, kv_cache.last = k_docs, (docs[:, -1], pos[:, -1]) if pos is not None else None
        window = cfg.attn_window if window is None else window
        windows = {kind: None if not cfg.attn_window else window if kind == "L" else window // 2
                   for kind in set(cfg.windows())}
        flex = self.uses_flex(idx.device) and kv_cache is None
        return pos, make_masks(docs, k_docs, past, windows, flex, cfg.attn_block if cfg.attn_window else 0)

    def uses_flex(self, device):
        """Whether a forward without a KV cache masks through FlexAttention on device (a compiled kernel per input
        shape): the document masks or windows on CUDA with Triton (self.flex forces it either way), not in training
        with dropout (FlexAttention has none)."""
        cfg, flex = self.config, flex_runs(device)[0] if self.flex is None else self.flex
        return bool(flex and (cfg.doc_mask or cfg.attn_window) and not (self.training and cfg.dropout))

    def _logits(self, x):
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def forward(self, idx, targets=None, window=None, mtp=None):
        """idx, targets: (B, T) int64. Without targets: (logits (B, T, vocab_size), None). With targets:
        (None, the mean cross-entropy over targets != -1), computed without ever holding full logits.
        window: this call's long attention window (None: attn_window), for a run whose window grows.
        mtp: (K,) loss weights of the next K tokens (multi-token prediction, training only: each position also
        predicts the tokens after its target, from the same state through the same head; record #53)."""
        x = self._hidden(idx, window=window)
        if targets is None:
            return self._logits(x), None
        C = x.size(-1)
        if mtp is not None:  # (B, T) -> (B, T, K): the target k tokens further on in the row, -1 past its end
            targets = torch.stack([F.pad(targets[:, k:], (0, k), value=-1) for k in range(mtp.size(0))], dim=-1)
            targets = targets.reshape(-1, mtp.size(0))  # (B*T, K)
        else:
            targets = targets.reshape(-1)
        return None, head_loss(x.reshape(-1, C), self.lm_head.weight, targets, self.config.logit_softcap, mtp)

    @torch.no_grad()
    def token_losses(self, idx, targets, window=None):
        """Cross-entropy of each position (B, T), 0 where targets == -1: for evals that score rows apart
        (HellaSwag endings), without full logits either. window: as forward's."""
        x = self._hidden(idx, window=window)
        out = head_row_losses(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                              self.config.logit_softcap)  # (B*T,)
        return out.view_as(targets)

    def forward_cached(self, idx, kv_cache):
        """Incremental forward for generation: idx (B, T) are the tokens after the len(kv_cache)
        cached ones. Appends their keys/values to kv_cache; returns logits of the last position (B, vocab_size)."""
        return self._logits(self._hidden(idx, kv_cache)[:, -1, :])

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"can only crop block_size to 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eot_token=None,
                 use_cache=True, on_token=None, sample_vocab_size=None):
        """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + generated).

        temperature 0 picks the most likely token (greedy). top_k keeps the k most likely tokens;
        top_p keeps the smallest set whose probability reaches p (nucleus sampling, Holtzman et al. 2019).
        Generation stops once every row has produced eot_token (rows that finish early are padded with it).
        on_token(token_id) is called with each new token as it is produced (batch size 1 only).
        Only ids below sample_vocab_size are ever sampled (default: all of vocab_size); pass the
        tokenizer's vocabulary (GPT-2: 50257) so the padding rows of a 50304-row head are never picked.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if on_token is not None and idx.size(0) != 1:
            raise ValueError("on_token streams one sequence: call generate with batch size 1")
        n_vocab = min(self.config.vocab_size, sample_vocab_size or self.config.vocab_size)
        block_size = self.config.block_size
        kv_cache = None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            # Positions are absolute (wpe), so once the context is longer than block_size the
            # window slides and every cached key is stale: recompute the cropped window in full.
            if use_cache and idx.size(1) < block_size:
                if kv_cache is None:
                    kv_cache = KVCache(self.config.n_layer)
                    logits = self.forward_cached(idx, kv_cache)  # prefill with the whole prompt
                else:
                    logits = self.forward_cached(idx[:, -1:], kv_cache)
            else:  # only the last position's logits (B, vocab_size), never (B, T, vocab_size)
                ctx = idx[:, -block_size:]
                n = ctx.size(1)  # padded on the right to one of a few lengths: causal attention leaves the logits of
                ctx = F.pad(ctx, (0, padded_length(n, block_size, self.uses_flex(idx.device)) - n))  # the n-th alone
                logits = self._logits(self._hidden(ctx)[:, n - 1, :])
            next_id = self._pick(logits[:, :n_vocab].float(), temperature, top_k, top_p)  # (B, 1)
            if eot_token is not None:
                next_id = torch.where(done[:, None], torch.full_like(next_id, eot_token), next_id)
                done |= next_id[:, 0] == eot_token
            idx = torch.cat((idx, next_id), dim=1)
            if on_token is not None:
                on_token(int(next_id[0, 0]))
            if eot_token is not None and bool(done.all()):
                break
        return idx

    @staticmethod
    def _pick(logits, temperature, top_k, top_p):
        """One token id per row (B, 1) from logits (B, V)."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens before it already reach top_p; the first token always stays
            drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
            drop = drop_sorted.scatter(1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1)
