import math
import time

import pytest
import tiktoken
import torch

from model import GPT, GPTConfig, KVCache
from gptlib.shards import EOT, VOCAB_SIZE
from conftest import shakespeare


def tiny(**kw):
    args = dict(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    args.update(kw)
    return GPTConfig(**args)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(tiny(**kw)).eval()


def test_shapes_and_loss_at_init_is_uniform_guess():
    model = make()
    x = torch.randint(0, VOCAB_SIZE, (4, 32))
    y = torch.randint(0, VOCAB_SIZE, (4, 32))
    logits, loss = model(x, y)
    assert logits is None  # with targets no logits are kept: the loss never holds them all
    # small init -> near-uniform prediction -> loss close to ln(vocab)
    assert abs(loss.item() - math.log(50304)) < 0.1
    logits, loss = model(x)
    assert loss is None and logits.shape == (4, 32, 50304)


def test_ignore_index_excludes_targets():
    model = make()
    x = torch.randint(0, VOCAB_SIZE, (2, 16))
    y = torch.randint(0, VOCAB_SIZE, (2, 16))
    y_masked = y.clone()
    y_masked[:, 8:] = -1
    _, loss_masked = model(x, y_masked)
    logits, _ = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 50304), y[:, :8].reshape(-1))
    assert torch.allclose(loss_masked, expected, atol=1e-6)


def test_too_long_input_is_refused():
    model = make()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def hand_count(V, T, L, C, bias, tied):
    ln = 2 * C if bias else C
    attn = C * 3 * C + (3 * C if bias else 0) + C * C + (C if bias else 0)
    mlp = C * 4 * C + (4 * C if bias else 0) + 4 * C * C + (C if bias else 0)
    block = 2 * ln + attn + mlp
    emb = V * C + T * C
    head = 0 if tied else V * C
    return emb + L * block + ln + head, L * block + ln


@pytest.mark.parametrize("bias,tied", [(True, True), (False, True), (True, False), (False, False)])
def test_param_counts_by_hand(bias, tied):
    model = make(bias=bias, tie_weights=tied, vocab_size=100)
    total, non_emb = hand_count(100, 32, 2, 32, bias, tied)
    assert model.get_num_params() == total
    assert model.get_num_params(non_embedding=True) == non_emb


def test_gpt2_124m_count():
    # the well-known figures for GPT-2 small with the padded vocab: 124.48M total, 85.06M non-embedding
    with torch.device("meta"):
        model = GPT(GPTConfig())
    assert model.get_num_params() == 124_475_904
    assert model.get_num_params(non_embedding=True) == 85_056_000


def test_nanogpt_parameter_names_and_tying():
    model = make()
    names = set(model.state_dict())
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
              "transformer.ln_f.weight", "lm_head.weight"]:
        assert n in names
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = make(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=128, n_head=4, vocab_size=1000))
    sd = model.state_dict()
    assert abs(sd["transformer.h.0.mlp.c_fc.weight"].std().item() - 0.02) < 0.002
    assert abs(sd["transformer.h.0.mlp.c_proj.weight"].std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(sd["transformer.h.3.attn.c_proj.weight"].std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert sd["transformer.h.0.attn.c_attn.bias"].abs().max().item() == 0


def test_adamw_steps_on_tinyshakespeare_reduce_loss(corpus):
    text = shakespeare()[:50_000]
    tokens = torch.tensor(tiktoken.get_encoding("gpt2").encode_ordinary(text))
    model = make()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    B, T = 8, 32
    losses = []
    for _ in range(25):
        starts = torch.randint(0, len(tokens) - T - 1, (B,), generator=gen)
        x = torch.stack([tokens[s:s + T] for s in starts])
        y = torch.stack([tokens[s + 1:s + T + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 10.5
    assert sum(losses[-5:]) / 5 < losses[0] - 2.0


def test_crop_block_size():
    model = make()
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape == (16, 32)
    assert model.config.block_size == 16
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError):
        model.crop_block_size(64)


# ----------------------------------------------------------------------------- generation

def test_kv_cache_greedy_equals_full_recompute_past_block_size():
    model = make(seed=1)
    prompt = torch.randint(0, VOCAB_SIZE, (2, 5))
    # 5 + 50 tokens crosses block_size 32, so the sliding-window path is exercised too
    with_cache = model.generate(prompt, 50, temperature=0, use_cache=True)
    without = model.generate(prompt, 50, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 55)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :5], prompt)


def test_cached_chunk_matches_full_forward():
    # several new tokens after a cached prefix use the offset causal mask
    model = make(seed=2)
    x = torch.randint(0, VOCAB_SIZE, (2, 20))
    full, _ = model(x)
    cache = KVCache(model.config.n_layer)
    model.forward_cached(x[:, :7], cache)
    last = model.forward_cached(x[:, 7:], cache)
    assert len(cache) == 20
    assert torch.allclose(last, full[:, -1], atol=1e-5)


def test_sampling_with_seed_is_reproducible_and_cache_agnostic():
    model = make(seed=3)
    prompt = torch.randint(0, VOCAB_SIZE, (1, 4))
    torch.manual_seed(7)
    a = model.generate(prompt, 20, temperature=1.0, top_k=50, use_cache=True)
    torch.manual_seed(7)
    b = model.generate(prompt, 20, temperature=1.0, top_k=50, use_cache=False)
    assert torch.equal(a, b)


def test_top_k_restricts_support():
    torch.manual_seed(0)
    logits = torch.randn(1, 200).repeat(2000, 1)
    allowed = set(torch.topk(logits[0], 5).indices.tolist())
    picked = set(GPT._pick(logits, 1.0, 5, None)[:, 0].tolist())
    assert picked <= allowed and len(picked) == 5


def test_top_p_restricts_support_to_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    logits = probs.log().repeat(4000, 1)
    torch.manual_seed(0)
    # 0.5 + 0.3 = 0.8 reaches 0.75: the nucleus is {0, 1}
    picked = GPT._pick(logits, 1.0, None, 0.75)[:, 0]
    assert set(picked.tolist()) == {0, 1}
    assert abs((picked == 0).float().mean().item() - 0.5 / 0.8) < 0.05
    # a tiny p still keeps the most likely token
    assert set(GPT._pick(logits, 1.0, None, 1e-6)[:, 0].tolist()) == {0}
    # 0.5 + 0.3 + 0.1 = 0.9 is needed to reach 0.85
    assert set(GPT._pick(logits, 1.0, None, 0.85)[:, 0].tolist()) == {0, 1, 2}


def force_token(model, token):
    """Make the model always predict `token`: ln_f outputs a constant vector that only one head row matches."""
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        u = torch.randn(model.config.n_embd)
        model.transformer.ln_f.bias.copy_(u)
        model.lm_head.weight[token] = 100 * u


def test_padded_vocab_ids_are_never_sampled():
    model = make(tie_weights=False)
    force_token(model, 50300)  # a padding row
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 30, temperature=1.0, sample_vocab_size=VOCAB_SIZE)
    assert out.max().item() < VOCAB_SIZE


def test_stop_at_eot_and_streaming():
    model = make(tie_weights=False)
    force_token(model, EOT)
    seen = []
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 20, temperature=0.8, eot_token=EOT, on_token=seen.append)
    assert out.shape == (1, 4) and out[0, -1].item() == EOT
    assert seen == [EOT]
    # without eot_token it runs the full length
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 20, temperature=0.8)
    assert out.shape == (1, 23)


def test_batch_rows_that_finish_early_are_padded_with_eot():
    model = make(seed=5, tie_weights=False)
    force_token(model, EOT)
    with torch.no_grad():
        model.lm_head.weight[7] = model.lm_head.weight[EOT]  # EOT and token 7 equally likely at each step
    torch.manual_seed(0)
    out = model.generate(torch.zeros(8, 1, dtype=torch.long), 40, temperature=1.0, eot_token=EOT)
    new = out[:, 1:]
    assert (new == EOT).any(dim=1).all()  # it stopped because every row finished
    first_eot = (new == EOT).int().argmax(dim=1)
    assert len(set(first_eot.tolist())) > 1  # rows finished at different steps
    for row, k in zip(new, first_eot):
        assert (row[k:] == EOT).all() and (row[:k] == 7).all()
    assert new.size(1) == int(first_eot.max()) + 1


def test_streaming_reports_every_token_in_order():
    model = make(seed=4)
    seen = []
    out = model.generate(torch.zeros(1, 2, dtype=torch.long), 15, temperature=0, on_token=seen.append)
    assert seen == out[0, 2:].tolist()
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(torch.zeros(2, 2, dtype=torch.long), 3, on_token=print)


def test_bad_sampling_settings_are_refused():
    model = make()
    x = torch.zeros(1, 1, dtype=torch.long)
    for kw in [dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)]:
        with pytest.raises(ValueError):
            model.generate(x, 1, **kw)


@pytest.mark.slow
def test_kv_cache_speedup():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384)).eval()  # 30M parameters
    prompt = torch.randint(0, VOCAB_SIZE, (1, 8))
    t0 = time.perf_counter()
    a = model.generate(prompt, 200, temperature=0, use_cache=True)
    t1 = time.perf_counter()
    b = model.generate(prompt, 200, temperature=0, use_cache=False)
    t2 = time.perf_counter()
    assert torch.equal(a, b)
    print(f"cache {200 / (t1 - t0):.1f} tok/s, no cache {200 / (t2 - t1):.1f} tok/s")
    assert (t2 - t1) > 1.5 * (t1 - t0)
