"""GPT-2 in one file, with nanoGPT's parameter names so checkpoints interoperate.

References:
1) GPT-2 paper, "Language Models are Unsupervised Multitask Learners" (Radford et al. 2019)
2) OpenAI's GPT-2 TensorFlow code: https://github.com/openai/gpt-2/blob/master/src/model.py
Only the model lives here: optimizer policy, FLOP/MFU accounting and hardware tables are elsewhere.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F


INIT_STD = 0.02  # GPT-2's weight init std (OpenAI's model.py, `normal_initializer(0.02)`)


@dataclass
class GPTConfig:
    # each setting's valid range is in its metadata, which gptlib/settings.py checks for every command
    block_size: int = field(default=1024, metadata={"ge": 1})  # longest context the model can see (positions in wpe)
    vocab_size: int = field(default=50304, metadata={"ge": 1})  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = field(default=12, metadata={"ge": 1})  # number of transformer blocks
    n_head: int = field(default=12, metadata={"ge": 1})  # attention heads per block
    n_embd: int = field(default=768, metadata={"ge": 1})  # width of the residual stream
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})  # dropout probability (0 for pre-training, 0.1+ for fine-tuning)
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2; False is a bit faster and better
    tie_weights: bool = True  # share wte and lm_head weights, as GPT-2 (Press & Wolf 2017)

    def problems(self):
        """Why these settings cannot build a model, as messages (empty when they can)."""
        out = []
        if self.n_embd % self.n_head:
            out.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; each head gets n_embd/n_head "
                       f"channels, so pick values that divide")
        return out


class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer, for incremental decoding."""

    def __init__(self, n_layer):
        self.layers = [None] * n_layer  # layer i -> (k, v), each (B, nh, T_past, hs)

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


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length(self.layer_idx)
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0:
            # flash / memory-efficient kernels when available (Dao et al. 2022)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # one new query sees every cached key
        else:
            # new query i sits at position past + i and may see keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation of GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 paper section 2.3)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.problems():
            raise ValueError(config.problems()[0])
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 paper section 2.3: scale the weights of residual projections by 1/sqrt(N),
        # N = number of residual layers = 2 per block (attention and MLP)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))

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
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.lm_head.weight.numel()
        return n

    def forward(self, idx, targets=None):
        """idx, targets: (B, T) int64. Returns logits (B, T, vocab_size) and the mean
        cross-entropy over targets != -1 (or None without targets)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}; crop the input")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def forward_cached(self, idx, kv_cache):
        """Incremental forward for generation: idx (B, T) are the tokens after the len(kv_cache)
        cached ones. Appends their keys/values to kv_cache; returns logits of the last position (B, vocab_size)."""
        past = len(kv_cache)
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"cached length {past} + {T} new tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, kv_cache)
        return self.lm_head(self.transformer.ln_f(x[:, -1, :]))  # (B, vocab_size)

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"can only crop block_size to 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
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
            else:
                logits, _ = self(idx[:, -block_size:])
                logits = logits[:, -1, :]
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
