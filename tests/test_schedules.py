"""The run-length schedules of the records after #18 (issue 35): tokens per step (record #46), row length (#89),
multi-token prediction and the late untie of the head (#53). Each is a pure function of the iteration; a run
stopped anywhere resumes bit-identically on the CPU, through every change; 2 ranks match 1 process with twice the
accumulation; the metrics, the ETA and the plan count the real tokens; sample, eval and export see an ordinary
next-token model."""
import json
import signal

import pytest
import torch

import train
from conftest import REPO, shakespeare
from gptlib import checkpoint, schedules
from gptlib.settings import load_config
from gptlib.train_settings import TrainConfig
from test_ddp import COMMON, assert_close, losses, torchrun
from test_recipe import stop_at
from test_train import TINY, make_dataset, metrics

MODERN = str(REPO / "config" / "recipe_modern.py")
SCHEDULES = {  # name -> settings (TINY: 4 x 32 micro-batches of 128 tokens, 12 steps in 3 parts of 4); 'all' in the
    # default suite, each alone under -m slow
    "batch": ["--batch_schedule=128,256,384"],
    "seq": ["--seq_schedule=8,16,32"],
    "mtp": ["--mtp=0.5,0.25"],
    "untie": [MODERN, "--untie_at=0.5", "--lr_schedule=cosine", "--window_start=0"],
    "all": [MODERN, "--batch_schedule=128,256,384", "--seq_schedule=8,16,32", "--mtp=0.5,0.25", "--untie_at=0.5",
            "--lr_schedule=cosine", "--window_start=0"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("schedules"), shakespeare()[:120_000], val_docs=20)


def args(data, out, extra):
    files = [a for a in extra if a.endswith(".py")]
    return files + TINY + [a for a in extra if not a.endswith(".py")] + [
        f"--data_dir={data}", f"--out_dir={out}", "--max_iters=12", "--eval_interval=4", "--warmup_iters=1",
        "--dropout=0.1"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "all" else n for n in SCHEDULES])
def test_a_run_stopped_mid_schedule_resumes_bit_identically(name, data, tmp_path, monkeypatch):
    """Stopped at iteration 5 (in the second part, after the untie) and resumed: the same losses, evals and
    weights to the bit as a run straight through; tokens count each step's own."""
    extra = SCHEDULES[name]
    assert train.run(args(data, tmp_path / "a", extra)) == 0
    with monkeypatch.context() as m:
        stop_at(m, 5)
        assert train.run(args(data, tmp_path / "b", extra)) == 128 + signal.SIGTERM
    assert train.run(args(data, tmp_path / "b", extra + ["--init_from=resume"])) == 0
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [(r["iter"], r["loss"], r["tokens"]) for r in a] == [(r["iter"], r["loss"], r["tokens"]) for r in b]
    wa, wb = (checkpoint.load_checkpoint(str(p / "ckpt.pt"))["model"] for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = load_config(TrainConfig, args(data, tmp_path / "a", extra))
    assert a[-1]["tokens"] == schedules.tokens_in(0, 12, cfg)
    if "--batch_schedule=128,256,384" in extra:
        assert [r["tokens"] for r in a][:5] == [128, 256, 384, 512, 768]  # parts of 4 steps: 128, then 256 a step


def test_the_untied_head_is_its_own_after_the_untie_and_an_ordinary_model_after(data, tmp_path, monkeypatch):
    """Before the untie the head is the token embedding; after it each has its own weights (the checkpoint holds
    both names either way); sample, eval and export load the untied model."""
    out, extra = tmp_path / "run", SCHEDULES["untie"]  # unties at iteration 6 of 12
    with monkeypatch.context() as m:
        stop_at(m, 3)
        assert train.run(args(data, out, extra)) == 128 + signal.SIGTERM
    tied = checkpoint.load_checkpoint(str(out / "ckpt.pt"))
    assert tied["loop"]["iter_num"] == 4
    assert torch.equal(tied["model"]["lm_head.weight"], tied["model"]["transformer.wte.weight"])
    assert train.run(args(data, out, extra + ["--init_from=resume"])) == 0
    untied = checkpoint.load_checkpoint(str(out / "ckpt.pt"))
    assert not torch.equal(untied["model"]["lm_head.weight"], untied["model"]["transformer.wte.weight"])
    assert "the head unties from the token embedding" in (out / "log.txt").read_text()
    for ckpt in (tied, untied):
        model = checkpoint.model_from_checkpoint(ckpt)
        assert model.lm_head.weight is not model.transformer.wte.weight and not model.config.tie_weights


def test_two_ranks_match_one_process_through_every_schedule(data, tmp_path):
    common = ["--batch_size=2", "--batch_schedule=128,256,256", "--seq_schedule=8,32,32", "--mtp=0.5",
              "--untie_at=0.5"]
    files = [MODERN]
    base = files + TINY + COMMON + common + [f"--data_dir={data}", "--max_iters=6", "--eval_interval=3",
                                              "--warmup_iters=1", "--lr_schedule=cosine", "--window_start=0"]
    assert train.run(base + [f"--out_dir={tmp_path / 'one'}"]) == 0
    torchrun(2, base + [f"--out_dir={tmp_path / 'two'}"])
    assert_close(losses(tmp_path / "two"), losses(tmp_path / "one"))


def test_the_plan_counts_the_batch_schedules_tokens(capsys):
    cfg = [str(REPO / "config" / "train_gpt2_124m_4070.py"), "--plan", "--batch_schedule=131072,262144,393216",
           "--max_iters=3000"]
    assert train.run(cfg) == 0
    out = capsys.readouterr().out
    assert "gradient accumulation 16/32/48 x 8 x 1024 x 1 GPU(s) = 131,072/262,144/393,216 tokens/step" in out
    assert "max_iters: 3,000 steps of a growing batch (batch_schedule; the last part's 393,216 tokens/step)  =  786M " \
           "tokens" in out  # 1,000 steps of each: 786M, not 3,000 x 393,216 = 1.18B


def test_mtp_weights_and_parts_follow_the_record():
    cfg = load_config(TrainConfig, ["--max_iters=300", "--mtp=0.5,0.25", "--warmup_iters=0"])
    assert schedules.mtp_at(0, cfg) == (1.0, 0.5, 0.25)
    assert schedules.mtp_at(50, cfg) == pytest.approx((1.0, 0.5, 0.125))  # the third token's weight fades first
    assert schedules.mtp_at(150, cfg) == pytest.approx((1.0, 0.25))  # then the second's, over the second third
    assert schedules.mtp_at(200, cfg) == (1.0,) and schedules.mtp_at(299, cfg) == (1.0,)
