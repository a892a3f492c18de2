"""The records' speed choices as settings (issue 36): bf16 value-embedding and bigram tables, an FP8 head, block-wise
windows (tests/test_attention_paths.py), bf16 FSDP2 all-gathers. Each keeps what users rely on: exact resume,
the planner's bytes, one-line refusals where it cannot run."""
import dataclasses
import signal

import pytest
import torch

import eval as eval_script
import sample
import train
from conftest import REPO, shakespeare
from gptlib import checkpoint, head_loss, optim
from gptlib.errors import run_command
from gptlib.train_settings import TrainConfig
from model import GPT, GPTConfig
from test_recipe import stop_at
from test_train import TINY, make_dataset, metrics

SPEEDRUN = str(REPO / "config" / "recipe_speedrun.py")
SMALL = [SPEEDRUN] + TINY + ["--block_size=128", "--batch_size=1", "--total_batch_size=256", "--value_embeds=1",
                             "--attn_window=64", "--window_start=16", "--window_pattern=LS", "--eot_token=198",
                             "--bigram_embeds=101", "--warmup_iters=1", "--eval_interval=3", "--dropout=0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("speed"), shakespeare()[:80_000], val_docs=20)


def test_bf16_tables_resume_exactly_and_the_planner_counts_their_bytes(data, tmp_path, monkeypatch):
    args = SMALL + [f"--data_dir={data}", "--table_dtype=bf16", "--max_iters=6"]
    assert train.run(args + [f"--out_dir={tmp_path / 'a'}"]) == 0
    with monkeypatch.context() as m:
        stop_at(m, 3)
        assert train.run(args + [f"--out_dir={tmp_path / 'b'}"]) == 128 + signal.SIGTERM
    assert train.run(args + [f"--out_dir={tmp_path / 'b'}", "--init_from=resume"]) == 0
    assert [r["loss"] for r in metrics(tmp_path / "a")] == [r["loss"] for r in metrics(tmp_path / "b")]
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    tables = ["transformer.vte.0.weight", "transformer.bte.weight"]
    assert {ckpt["model"][k].dtype for k in tables} == {torch.bfloat16}
    assert ckpt["model"]["transformer.wte.weight"].dtype == torch.float32
    held = sum(t.numel() * t.element_size() for part in ckpt["optimizer"].values() for s in part["state"].values()
               for t in s.values() if torch.is_tensor(t) and t.dim())
    cfg = TrainConfig(**ckpt["config"])
    with torch.device("meta"):
        model = GPT(GPTConfig(**ckpt["model_args"]))
    assert optim.state_bytes(model, cfg) == held
    assert optim.weight_bytes(model, cfg) == sum(t.numel() * t.element_size() for t in ckpt["model"].values())
    # the other commands load it into their fp32 model
    assert eval_script.run(eval_script.load_config(eval_script.EvalConfig, [f"--out_dir={tmp_path / 'a'}",
                                                                           "--max_tokens=256"]))["val"]["loss"] > 0
    assert sample.main([f"--out_dir={tmp_path / 'a'}", "--max_new_tokens=3", "--num_samples=1"]) is None


def test_bf16_tables_halve_their_bytes_in_the_plan():
    cfg = dataclasses.replace(TrainConfig(), value_embeds=3, optimizer="muon")
    with torch.device("meta"):
        model = GPT(GPTConfig(value_embeds=3))
    tables = 3 * 50304 * 768
    lean = dataclasses.replace(cfg, table_dtype="bf16")
    assert optim.weight_bytes(model, cfg) - optim.weight_bytes(model, lean) == 2 * tables
    assert optim.state_bytes(model, cfg) - optim.state_bytes(model, lean) == 4 * tables  # two moments, 2 bytes each


def test_the_fp8_head_gives_the_loss_and_gradients_of_the_bf16_one():
    """FP8 matmuls run on the CPU too (torch._scaled_mm), so the op's arithmetic is checked here: the loss within
    0.1%, the gradients' directions within 0.1% (cosine), against the bf16 head under autocast. Its speed needs a
    GPU with FP8 tensor cores (benchmarks/gpu_followup.sh)."""
    torch.manual_seed(0)
    x, w, t = torch.randn(256, 64), torch.randn(512, 64) * 0.05, torch.randint(0, 512, (256,))

    def run(fp8):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16), head_loss.fp8(fp8):
            loss = head_loss.head_loss(xx, ww, t)
        loss.backward()
        return loss.item(), xx.grad.flatten(), ww.grad.flatten()
    (a, ax, aw), (b, bx, bw) = run(False), run(True)
    assert abs(a - b) < 1e-3 * a
    for p, q in ((ax, bx), (aw, bw)):
        assert torch.dot(p, q) / (p.norm() * q.norm()) > 0.999
    assert not head_loss._fp8  # the context ends with the block


def test_fp8_head_off_a_capable_gpu_is_one_line(data, tmp_path, capsys):
    rc = run_command(train.main, TINY + [f"--data_dir={data}", f"--out_dir={tmp_path}", "--fp8_head=True"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "FP8 tensor cores" in err[0] and "--fp8_head=False" in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # a 2-rank torchrun (~10 s)
def test_fsdp_gathers_bf16_weights_and_stays_close_to_a_replica(data, tmp_path):
    """--fsdp_dtype=bf16 on 2 gloo ranks: every weight used as its bf16 rounding (on a CPU without autocast the
    whole forward then runs in bf16), gradients reduced in fp32. The losses move off the fp32 replica's, by under 1%
    at these steps."""
    from test_ddp import COMMON, losses, torchrun
    common = TINY + COMMON + [f"--data_dir={data}", "--max_iters=3"]
    assert train.run(common + [f"--out_dir={tmp_path / 'one'}"]) == 0
    torchrun(2, common + [f"--out_dir={tmp_path / 'two'}", "--sharding=fsdp", "--fsdp_dtype=bf16"])
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [i for i, _ in one] == [i for i, _ in two]
    diffs = [abs(a - b) / b for (_, a), (_, b) in zip(two, one)]
    assert max(diffs) < 1e-2 and max(diffs) > 1e-6, diffs  # bf16's rounding shows, and stays small
    assert "note: fsdp_dtype" not in (tmp_path / "two" / "log.txt").read_text()  # in force: not noted as inert
