"""Memory options (issue 27): activation checkpointing gives the same loss and gradients as keeping every
activation, in each recipe, end to end in train.py, and under torchrun with 2 ranks."""
import copy

import pytest
import torch

import train
from gptlib import runtime
from conftest import shakespeare
from model import GPT, GPTConfig
from test_ddp import COMMON, assert_close, losses, torchrun
from test_train import TINY, make_dataset

SHAPES = dict(n_layer=4, n_head=2, n_embd=32, block_size=64, vocab_size=256, dropout=0.1)
RECIPES = {
    "classic": {},
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", bias=False, tie_weights=False),
    "speedrun": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", bias=False, tie_weights=False,
                     doc_mask=True, eot_token=0, attn_window=16, value_residual=True, x0_skip=True, unet_skips=True,
                     value_embeds=1, logit_softcap=15.0),
}


def checkpointed(m, mode):
    """A copy of m with its blocks wrapped for `mode`, as train.py wraps them (gptlib/runtime.py)."""
    return runtime.checkpoint_blocks(copy.deepcopy(m), mode)


def grads_of(m):
    """Parameter name (the state_dict's, without the checkpoint wrapper's part) -> its gradient."""
    return {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in m.named_parameters() if p.grad is not None}


def loss_and_grads(m, idx, mode):
    m = checkpointed(m, mode)
    torch.manual_seed(1)  # dropout's masks: checkpointing replays the RNG, so they are the same as without it
    _, loss = m(idx, idx)
    loss.backward()
    return loss.detach(), grads_of(m)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_checkpointing_gives_the_same_loss_and_gradients(recipe):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**SHAPES, **RECIPES[recipe])).train()
    idx = torch.randint(0, 256, (3, 64))
    idx[:, ::13] = 0  # document starts, for the speedrun's document masks
    loss, grads = loss_and_grads(m, idx, "none")
    for mode in ("selective", "full"):
        loss2, grads2 = loss_and_grads(m, idx, mode)
        assert torch.equal(loss2, loss), mode
        assert grads2.keys() == grads.keys()
        for n in grads:
            assert torch.allclose(grads2[n], grads[n], rtol=1e-6, atol=1e-7), (mode, n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ckpt_data"), shakespeare()[:80_000], val_docs=20)


def test_train_py_with_checkpointing_matches_without_and_on_two_ranks(data, tmp_path):
    """train.py end to end (fp32 CPU, dropout on): the same losses with each mode; and 2 ranks with full
    checkpointing match 1 process (non-reentrant checkpointing under DDP)."""
    common = TINY + COMMON + [f"--data_dir={data}", "--max_iters=4"]
    runs = {}
    for mode in ("none", "selective", "full"):
        assert train.run(common + ["--dropout=0.1", f"--out_dir={tmp_path / mode}",
                                   f"--activation_checkpointing={mode}"]) == 0
        runs[mode] = losses(tmp_path / mode)
    assert runs["selective"] == runs["none"] and runs["full"] == runs["none"]
    assert train.run(common + [f"--out_dir={tmp_path / 'one'}"]) == 0  # no dropout: each rank draws its own masks
    torchrun(2, common + [f"--out_dir={tmp_path / 'two'}", "--activation_checkpointing=full"])
    assert_close(losses(tmp_path / "two"), losses(tmp_path / "one"))


def test_the_modes_are_the_wrappers_table_and_checkpoints_keep_their_names():
    assert set(runtime.CHECKPOINTING) == {"none", "selective", "full"}
    assert set(train.TrainConfig.__dataclass_fields__["activation_checkpointing"].metadata["choices"]) == \
        set(runtime.CHECKPOINTING)
    m = GPT(GPTConfig(**SHAPES))
    wrapped = checkpointed(m, "full")
    assert wrapped.state_dict().keys() == m.state_dict().keys()  # a checkpoint is the same with or without it
    wrapped.load_state_dict(m.state_dict())


def test_the_plan_gives_each_part_and_the_options_that_make_a_run_fit(capsys):
    """--plan --memory_gib: weights, gradients, optimizer and activations, then whether it fits, else the cheapest
    options that do (checkpointing, then a smaller micro-batch at the same total batch); applied, they fit."""
    from conftest import REPO
    base = [str(REPO / "config" / "train_gpt2_124m_4070.py"), "--plan", "--n_layer=24", "--n_embd=1024",
            "--n_head=16", "--batch_size=16"]
    assert train.run(base + ["--memory_gib=16"]) == 0
    out = capsys.readouterr().out
    assert "weights 1.32 + gradients 1.32 + optimizer 2.64 + activations" in out  # 354M parameters x 4 bytes
    line = next(x for x in out.splitlines() if "fit" in x)
    assert line.startswith("does not fit on 16 GiB") and "fits with --activation_checkpointing=" in line
    fix = line.split("fits with ")[1].split(" (")[0].split(":")[0].split()
    assert train.run(base + ["--memory_gib=16"] + fix) == 0
    assert "\nfits on 16 GiB" in capsys.readouterr().out


def test_a_run_that_would_not_fit_stops_at_the_start_in_one_line(data, tmp_path, capsys):
    from gptlib.errors import run_command
    args = TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2", "--memory_gib=0.001"]
    assert run_command(train.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: does not fit on 0.001 GiB"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointing_compiled_gives_the_compiled_loss_and_gradients(mode):
    """torch.compile'd (CPU inductor, as train.py compiles it), each mode against the compiled model without it:
    the same loss and gradients within float rounding (the compiler may fuse the recomputed work differently)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{**SHAPES, "dropout": 0.0}, **RECIPES["modern"])).train()
    idx = torch.randint(0, 256, (3, 64))

    def step(checkpointing):
        wrapped = checkpointed(m, checkpointing)
        _, loss = torch.compile(wrapped)(idx, idx)
        loss.backward()
        return loss.detach(), grads_of(wrapped)
    loss, grads = step("none")
    loss2, grads2 = step(mode)
    assert torch.allclose(loss2, loss, rtol=1e-6)
    for n in grads:
        assert torch.allclose(grads2[n], grads[n], rtol=1e-4, atol=1e-6), n
