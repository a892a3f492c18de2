"""The modern recipe: each model switch, Muon + WSD, exact resume, DDP, what refuses a modern model,
FLOPs, and the shuffled-windows data order."""
import json
import math
import os
import signal

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F

import train
from conftest import REPO, shakespeare
from gptlib import checkpoint, monitor, optim, runtime, schedules, shards
from gptlib.loader import TokenLoader
from gptlib.settings import load_config
from gptlib.train_settings import TrainConfig
from model import GPT, GPTConfig
from test_ddp import assert_close, loader_stream, torchrun
from test_train import TINY, make_dataset, metrics

MODERN = str(REPO / "config" / "recipe_modern.py")
SWITCHES = {"rope": dict(pos_emb="rope"), "rmsnorm": dict(norm="rmsnorm"), "qk_norm": dict(qk_norm=True),
            "relu2": dict(mlp_act="relu2"), "zero_init": dict(zero_init=True, tie_weights=False),
            "softcap": dict(logit_softcap=15.0), "no bias": dict(bias=False),
            "all": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", zero_init=True, tie_weights=False,
                        bias=False, logit_softcap=15.0)}


@pytest.fixture(scope="module")
def tokens():
    text = shakespeare()[:60_000]
    return torch.tensor(tiktoken.get_encoding("gpt2").encode_ordinary(text))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    text = shakespeare()[:120_000]
    return make_dataset(tmp_path_factory.mktemp("recipe"), text, val_docs=20)


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32, **kw))


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_switch_builds_starts_at_chance_and_learns(switch, tokens):
    model = tiny(**SWITCHES[switch])
    x = tokens[:4 * 33].view(4, 33)
    logits, _ = model(x[:, :-1])
    assert logits.shape == (4, 32, 50304)
    _, loss = model(x[:, :-1], x[:, 1:])
    assert abs(loss.item() - math.log(50304)) < 0.1  # near-uniform at init (exactly uniform with a zero head)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        starts = torch.randint(0, len(tokens) - 33, (8,), generator=gen)
        batch = torch.stack([tokens[s:s + 33] for s in starts])  # (8, 33) -> inputs and targets
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5


def reference_gpt2(model, idx):
    """GPT-2's forward written out from the weights alone (OpenAI's model.py): what the defaults must compute."""
    sd, C, nh = model.state_dict(), model.config.n_embd, model.config.n_head
    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    ln = lambda x, p: F.layer_norm(x, (C,), sd[p + ".weight"], sd[p + ".bias"])
    for i in range(model.config.n_layer):
        p = f"transformer.h.{i}."
        qkv = ln(x, p + "ln_1") @ sd[p + "attn.c_attn.weight"].t() + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"].t() + sd[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].t()


def test_defaults_are_gpt2(tokens):
    model = tiny().eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial gains and biases, so a dropped parameter would show
            p.add_(0.05 * torch.randn_like(p))
    x = tokens[:64].view(2, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], reference_gpt2(model, x), atol=1e-5)
    assert GPTConfig().not_gpt2() == [] and "wpe" in model.transformer


def test_rope_kv_cache_greedy_equals_no_cache():
    model = tiny(**SWITCHES["all"]).eval()
    with torch.no_grad():  # a zero-init model predicts a constant: give it weights that vary
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompt = torch.randint(0, 50257, (2, 5))
    with_cache = model.generate(prompt, 50, temperature=0, use_cache=True)  # 55 > block_size 32: the window slides
    assert torch.equal(with_cache, model.generate(prompt, 50, temperature=0, use_cache=False))
    assert len(set(with_cache[0, 5:].tolist())) > 3  # really varies


def test_fused_loss_matches_cross_entropy_and_its_gradients(tokens):
    for kw in ({}, SWITCHES["all"]):
        model = tiny(**kw)
        with torch.no_grad():
            model.lm_head.weight.add_(0.1 * torch.randn_like(model.lm_head.weight))
        x, y = tokens[:96].view(3, 32), tokens[1:97].view(3, 32).clone()
        y[0, :7] = -1  # ignored targets
        logits, _ = model(x)
        want = F.cross_entropy(logits.view(-1, 50304), y.view(-1), ignore_index=-1)
        want.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        assert torch.allclose(loss, want, rtol=1e-6)
        for n, p in model.named_parameters():
            assert torch.allclose(p.grad, grads[n], atol=1e-6, rtol=1e-4), n
        per_position = F.cross_entropy(logits.view(-1, 50304), y.view(-1), ignore_index=-1, reduction="none")
        assert torch.allclose(model.token_losses(x, y), per_position.view(3, 32), atol=1e-5)  # what evals score


def test_flops_and_params_of_the_modern_model():
    cfg = load_config(TrainConfig, [MODERN, "--n_layer=3", "--n_head=4", "--n_embd=64", "--block_size=128",
                                    "--vocab_size=1000"])
    with torch.device("meta"):
        model = GPT(GPTConfig(**{k: getattr(cfg, k) for k in GPTConfig.__dataclass_fields__}))
    L, C, T, V = 3, 64, 128, 1000
    block = 12 * C * C + 2 * C  # q,k,v,o and the 4x MLP without biases; two RMSNorm gains
    assert model.get_num_params() == V * C + L * block + C + V * C  # wte, blocks, final norm, untied head; no wpe
    assert model.get_num_params(non_embedding=True) == L * block + C
    # 6N over every matmul weight (the head is one even untied) + attention; RoPE and ReLU^2 are elementwise
    assert monitor.model_flops_per_token(model, T) == 6 * (L * block + C + V * C) + 12 * L * C * T
    assert optim.checkpoint_bytes(model, cfg) == 4 * (model.get_num_params() + 2 * (model.get_num_params() - L * 12 * C * C)
                                                       + L * 12 * C * C)


def test_wsd_schedule_and_muon_momentum():
    cfg = load_config(TrainConfig, ["--lr_schedule=wsd", "--warmup_iters=10", "--max_iters=100", "--decay_frac=0.2",
                                    "--learning_rate=1e-3", "--min_lr=0", "--muon_momentum_warmup=50"])
    lrs = [schedules.lr_at(i, cfg) for i in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert set(lrs[10:80]) == {1e-3}  # stable
    assert lrs[90] == pytest.approx(5e-4) and lrs[100] == 0.0  # linear decay over the last 20 iterations
    assert schedules.decay_start(cfg) == 80
    assert schedules.muon_momentum_at(0, cfg) == 0.85 and schedules.muon_momentum_at(25, cfg) == pytest.approx(0.90)
    assert schedules.muon_momentum_at(500, cfg) == pytest.approx(0.95)


def stop_at(monkeypatch, it):
    """SIGTERM this process when the run starts the step of iteration `it` (train.py seeds each step first): it
    finishes that step, checkpoints and stops."""
    step_seed = runtime.step_seed

    def patched(seed, rank, i):
        if i == it:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_seed(seed, rank, i)
    monkeypatch.setattr(runtime, "step_seed", patched)


def test_muon_wsd_exact_resume(data, tmp_path, monkeypatch):
    """Muon (with its momentum warmup spanning the stop) + WSD (stopped inside the decay): stop at iteration 9,
    resume with the same command: bit-identical losses, evals and final weights on CPU in fp32."""
    args = TINY + [MODERN, f"--data_dir={data}", "--max_iters=16", "--eval_interval=4", "--warmup_iters=2",
                   "--muon_momentum_warmup=12", "--log_interval=3", "--dropout=0.1"]
    assert train.run(args + [f"--out_dir={tmp_path / 'a'}"]) == 0
    with monkeypatch.context() as m:
        stop_at(m, 9)
        assert train.run(args + [f"--out_dir={tmp_path / 'b'}"]) == 128 + signal.SIGTERM
    assert checkpoint.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))["loop"]["iter_num"] == 10
    assert train.run(args + [f"--out_dir={tmp_path / 'b'}", "--init_from=resume"]) == 0
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [(r["iter"], r["loss"], r["lr"]) for r in a] == [(r["iter"], r["loss"], r["lr"]) for r in b]
    assert [r["iter"] for r in b] == [3, 6, 9, 12, 15]  # the losses since the last log line were resumed too
    assert [(r["iter"], r["val/val"]) for r in metrics(tmp_path / "a", "eval")] == \
        [(r["iter"], r["val/val"]) for r in metrics(tmp_path / "b", "eval") if r["iter"] != 10]
    wa = checkpoint.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    wb = checkpoint.load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert set(wa["optimizer"]) == {"adamw", "muon"}


def test_wsd_extension_is_refused_after_the_decay_began_and_works_from_predecay(data, tmp_path, capsys):
    args = TINY + [MODERN, f"--data_dir={data}", "--eval_interval=5", "--warmup_iters=2", "--decay_frac=0.4"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert train.run(args + [f"--out_dir={straight}", "--max_iters=20"]) == 0
    assert train.run(args + [f"--out_dir={run}", "--max_iters=10"]) == 0  # the decay starts at iter 6
    assert checkpoint.load_checkpoint(str(run / "ckpt_predecay.pt"))["loop"]["iter_num"] == 6
    capsys.readouterr()
    assert train.run(args + [f"--out_dir={run}", "--max_iters=20", "--init_from=resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decaying since iter 6" in err[0] and "--resume_from=ckpt_predecay.pt" in err[0]
    finished = checkpoint.load_checkpoint(str(run / "ckpt.pt"))
    finished_best = checkpoint.load_checkpoint(str(run / "ckpt_best.pt"))["loop"]["best_val"]
    assert train.run(args + [f"--out_dir={run}", "--max_iters=20", "--init_from=resume",
                             "--resume_from=ckpt_predecay.pt"]) == 0
    # the finished 10-step model is kept under its own name (issue 19: the extension used to overwrite it)
    kept = checkpoint.load_checkpoint(str(run / "ckpt_final_0000010.pt"))
    assert kept["loop"]["iter_num"] == 10 and all(torch.equal(kept["model"][k], finished["model"][k]) for k in kept["model"])
    assert (run / "metrics_final_0000010.jsonl").exists()
    log = (run / "log.txt").read_text()
    assert "held iter 10, later than this resume from iter 6: kept as ckpt_final_0000010.pt" in log
    assert checkpoint.load_checkpoint(str(run / "ckpt_best.pt"))["loop"]["best_val"] <= finished_best  # never worse
    # from the stable-phase checkpoint the longer schedule continues exactly as if it had been planned
    assert [(r["iter"], r["loss"]) for r in metrics(straight) if r["iter"] > 6] == \
        [(r["iter"], r["loss"]) for r in metrics(run) if r["iter"] > 6]


def test_modern_recipe_two_ranks_match_one_process(data, tmp_path):
    common = TINY + [MODERN, f"--data_dir={data}", "--total_batch_size=512", "--eval_interval=3", "--max_iters=4",
                     "--warmup_iters=1"]
    assert train.run(common + [f"--out_dir={tmp_path / 'one'}"]) == 0
    torchrun(2, common + [f"--out_dir={tmp_path / 'two'}"])
    losses = lambda d: [(r["iter"], r["loss"]) for r in metrics(d)]
    assert_close(losses(tmp_path / "two"), losses(tmp_path / "one"))


def test_gpt2_weights_refuse_a_modern_model_and_a_capped_one_exports_as_code(data, tmp_path, capsys):
    from export import export
    assert export(tiny(**SWITCHES["all"]), str(tmp_path / "hf"))[1] == "code"  # without the cap: Apertus (test_export)
    assert "logit_softcap=15.0" in capsys.readouterr().err
    assert train.run(TINY + [MODERN, f"--data_dir={data}", f"--out_dir={tmp_path / 'ft'}", "--init_from=gpt2"]) == 2
    assert "loads OpenAI's GPT-2, which these model settings would change" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data order

def window_stream(data_dir, world, micro_steps, state=None):
    return loader_stream(data_dir, world, micro_steps, B=2, T=50, state=state, seed=3, order="windows", rows=True)


def test_windows_order_shuffles_within_shards_each_window_once_per_epoch(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [1001, 751, 501]  # 20 + 15 + 10 = 45 windows of 50 (+1) tokens
    for i, n in enumerate(lengths):
        shards.write_shard(str(tmp_path / shards.shard_name("train", i)), rng.integers(0, 50000, n).astype(np.uint16))
    one, _ = window_stream(tmp_path, 1, 24)  # 2 windows a step: 44 per epoch (1 dropped), then epoch 1
    epoch0 = [w for e, w in one if e == 0]
    assert len(epoch0) == 44 and len(set(epoch0)) == 44  # without replacement
    all_windows = {tuple(np.load(tmp_path / shards.shard_name("train", i))[j * 50:j * 50 + 50].astype(int))
                   for i, n in enumerate(lengths) for j in range((n - 1) // 50)}
    assert set(epoch0) <= all_windows
    stream_first = [tuple(row) for row in TokenLoader(str(tmp_path), "train", 2, 50, seed=3).next_batch()[0].tolist()]
    assert [w for _, w in one[:2]] != stream_first  # not the stream order
    assert len([w for e, w in one if e == 1]) == 4 and [w for e, w in one if e == 1] != epoch0[:4]  # a new order
    two, _ = window_stream(tmp_path, 2, 11)  # world-size independent: the same windows in the same order
    assert two[:44] == one[:44]
    _, state = window_stream(tmp_path, 2, 4)  # 16 windows read by 2 ranks, resumed on 1
    resumed, _ = window_stream(tmp_path, 1, 14, state=state)
    assert resumed == one[16:44]


def test_shipped_modern_config_holds_the_recipe():
    """config/train_modern_124m_4070.py == the 4070 config + config/recipe_modern.py, but for its own run length."""
    one = load_config(TrainConfig, [str(REPO / "config" / "train_modern_124m_4070.py")])
    layered = load_config(TrainConfig, [str(REPO / "config" / "train_gpt2_124m_4070.py"), MODERN])
    own = {"out_dir", "max_iters", "warmup_iters"}
    assert {k: v for k, v in vars(one).items() if k not in own} == {k: v for k, v in vars(layered).items() if k not in own}


def test_cpu_muon_orthogonalises_in_fp32_and_steps_as_torchs_muon():
    """torch.optim.Muon casts every update to bf16, which a CPU without bf16 units emulates ~60x slower than fp32:
    on the CPU the project's Muon does the same steps in fp32 (equal to bf16's rounding), with the same state."""
    from torch.optim._muon import _zeropower_via_newtonschulz
    g = torch.randn(96, 40, generator=torch.Generator().manual_seed(0))
    coeffs = (3.4445, -4.7750, 2.0315)
    ours, torchs = optim._orthogonalise(g, coeffs, 5, 1e-7), _zeropower_via_newtonschulz(g, coeffs, 5, 1e-7).float()
    assert ours.dtype == torch.float32 and (ours - torchs).abs().max() < 5e-2 * torchs.abs().max()  # bf16 vs fp32
    params = {}
    for cls in (optim.Muon, torch.optim.Muon):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(64, 32))
        opt = cls([w], lr=0.02, momentum=0.9, weight_decay=0.01)
        for i in range(3):
            w.grad = torch.sin(3 * w + i)
            opt.step()
        params[cls] = (w.detach().clone(), set(opt.state[w]))
    assert (params[optim.Muon][0] - params[torch.optim.Muon][0]).abs().max() < 1e-3
    assert params[optim.Muon][1] == params[torch.optim.Muon][1] == {"momentum_buffer"}
    model = tiny(**SWITCHES["all"])
    cfg = load_config(TrainConfig, [MODERN])
    assert type(optim.make_optimizer(model, cfg, "cpu").parts["muon"]) is optim.Muon
    assert type(optim.make_optimizer(model, cfg, "cuda").parts["muon"]) is torch.optim.Muon
