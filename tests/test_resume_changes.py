"""Resuming with changed settings (issue 10): what may change, what is logged, what is refused; a full disk
during a checkpoint; a checkpoint written at iteration 0."""
import errno
import os
import shutil
import signal

import pytest
import torch

from gptlib import checkpoint, evals
import plot
import train
from conftest import shakespeare
from test_train import TINY, make_dataset, metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    text = shakespeare()[:80_000]
    return make_dataset(tmp_path_factory.mktemp("resume"), text, val_docs=20)


def run(data, out, *extra):
    return train.run(TINY + [f"--data_dir={data}", f"--out_dir={out}", "--eval_interval=2", "--ckpt_interval=2", *extra])


def log_lines(out, prefix="resume: "):
    return [line for line in (out / "log.txt").read_text().splitlines() if line.startswith(prefix)]


def test_smaller_block_size_resumes_and_trains(data, tmp_path):
    """The position embeddings are cropped, with their optimizer state (it used to crash at the first step)."""
    assert run(data, tmp_path, "--max_iters=4") == 0
    assert run(data, tmp_path, "--max_iters=6", "--init_from=resume", "--block_size=16") == 0
    assert "resume: block_size 32 -> 16" in log_lines(tmp_path)
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["model_args"]["block_size"] == 16 and ckpt["model"]["transformer.wpe.weight"].shape[0] == 16
    assert [r["iter"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert run(data, tmp_path, "--max_iters=8", "--init_from=resume", "--block_size=16") == 0  # and again


def test_a_rope_model_resumes_with_a_longer_context(data, tmp_path):
    """RoPE has no position table: a larger block_size on resume is allowed (learned wpe still refuses it)."""
    rope = ["--pos_emb=rope", "--norm=rmsnorm"]
    assert run(data, tmp_path, "--max_iters=2", *rope) == 0
    assert run(data, tmp_path, "--max_iters=4", "--init_from=resume", "--block_size=64", *rope) == 0
    assert any("RoPE positions extend" in line for line in log_lines(tmp_path))
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["model_args"]["block_size"] == 64
    assert [r["iter"] for r in metrics(tmp_path)] == [1, 2, 3, 4]


def test_seed_change_is_logged_and_the_run_continues_on_its_own_seed(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(data, a, "--max_iters=4", "--dropout=0.1") == 0
    shutil.copytree(a, b)
    assert run(data, a, "--max_iters=8", "--dropout=0.1", "--init_from=resume") == 0
    assert run(data, b, "--max_iters=8", "--dropout=0.1", "--init_from=resume", "--seed=99") == 0
    assert any(line.startswith("resume: seed 1337 -> 99: kept at the checkpoint's seed") for line in log_lines(b))
    wa, wb = (checkpoint.load_checkpoint(str(d / "ckpt.pt"))["model"] for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same data order and dropout masks as without the change


def test_data_order_change_is_logged_and_the_run_keeps_its_own(data, tmp_path):
    """As the seed: a resume reads the data in the order the run began with (so a changed default never
    changes a run), and says so."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(data, a, "--max_iters=4", "--data_order=stream") == 0
    shutil.copytree(a, b)
    assert run(data, a, "--max_iters=6", "--init_from=resume", "--data_order=stream") == 0
    assert run(data, b, "--max_iters=6", "--init_from=resume", "--data_order=windows") == 0
    assert "resume: data_order 'stream' -> 'windows': kept at the checkpoint's order" in "\n".join(log_lines(b))
    assert [r["loss"] for r in metrics(a)] == [r["loss"] for r in metrics(b)]
    assert checkpoint.load_checkpoint(str(b / "ckpt.pt"))["loop"]["loader"]["order"] == "stream"


def test_tokens_are_a_running_total_across_a_batch_size_change(data, tmp_path):
    assert run(data, tmp_path, "--max_iters=4") == 0
    assert run(data, tmp_path, "--max_iters=6", "--init_from=resume", "--total_batch_size=512") == 0
    assert [r["tokens"] for r in metrics(tmp_path)] == [256, 512, 768, 1024, 1536, 2048]  # not iter x 512
    lines = log_lines(tmp_path)
    assert "resume: total_batch_size 256 -> 512" in lines
    assert [r["tokens"] for r in metrics(tmp_path, "eval")] == [0, 512, 1024, 2048]
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["tokens"] == 2048


def test_extension_that_rewarms_the_lr_says_so(data, tmp_path):
    assert run(data, tmp_path, "--max_iters=6") == 0
    assert run(data, tmp_path, "--max_iters=12", "--init_from=resume") == 0
    lines = log_lines(tmp_path)
    assert "resume: max_iters 6 -> 12" in lines
    assert any("the learning rate at iter 6 is now" in line and line.endswith("resume with --lr_decay_iters=6")
               for line in lines)
    # metrics.jsonl marks the resume with what changed; plot.py draws it, with the LR panel
    steps, evals, resumes = plot.load_run(str(tmp_path))
    assert [(r["iter"], r["tokens"]) for r in resumes] == [(6, 6 * 256)]
    assert "max_iters 6 -> 12" in resumes[0]["changes"]
    assert len(steps) == 12 and steps[6]["lr"] > steps[5]["lr"]  # the re-warm the message warned about
    png = plot.plot_runs([str(tmp_path)], str(tmp_path / "loss.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_rewarm_advice_names_what_keeps_the_old_schedule_and_works(data, tmp_path):
    """After a cosine->wsd switch the advice named the cosine-only lr_decay_iters (issue 28): it names the old
    schedule now. Each advice, applied, continues without the re-warm."""
    for i, (change, advice) in enumerate(((["--lr_schedule=wsd"], ["--lr_schedule=cosine", "--lr_decay_iters=6"]),
                                          ([], ["--lr_decay_iters=6"]))):
        out = tmp_path / str(i)
        assert run(data, out, "--max_iters=6") == 0
        with open(out / "ckpt.pt", "rb") as f:
            saved = f.read()
        assert run(data, out, "--max_iters=12", "--init_from=resume", *change) == 0
        line = next(x for x in log_lines(out) if "the learning rate at iter 6 is now" in x)
        assert line.endswith(f"resume with {' '.join(advice)}"), line
        for name in os.listdir(out):  # back to the 6-iteration run, then the advice
            if name != "ckpt.pt":
                os.remove(out / name)
        (out / "ckpt.pt").write_bytes(saved)
        assert run(data, out, "--max_iters=12", "--init_from=resume", *change, *advice) == 0
        assert not any("the learning rate at iter 6 is now" in x for x in log_lines(out))
        steps = metrics(out)
        assert all(b["lr"] <= a["lr"] for a, b in zip(steps, steps[1:]))


def test_checkpoint_at_iteration_0_resumes_with_its_eval_in_place(data, tmp_path, monkeypatch):
    """Stopped during the iter-0 eval: the checkpoint is at iter 0; the resume keeps that eval in metrics.jsonl
    (it used to move into metrics.jsonl.1) and does not run it again."""
    real = evals.eval_val_sets
    with monkeypatch.context() as m:
        def first_eval_then_sigterm(*a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **kw)
        m.setattr(evals, "eval_val_sets", first_eval_then_sigterm)
        assert run(data, tmp_path, "--max_iters=4") == 128 + signal.SIGTERM
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["iter_num"] == 0
    assert run(data, tmp_path, "--max_iters=4", "--init_from=resume") == 0
    assert not (tmp_path / "metrics.jsonl.1").exists()
    assert [r["iter"] for r in metrics(tmp_path, "eval")] == [0, 2, 4]
    assert [r["iter"] for r in metrics(tmp_path)] == [1, 2, 3, 4]


def test_disk_full_during_a_checkpoint_is_one_line_and_the_previous_one_resumes(data, tmp_path, monkeypatch, capsys):
    real = torch.save
    calls = []

    def save_until_full(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) >= 3:  # ckpt_best at 0, ckpt_best at 2, then ckpt.pt at 2: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", save_until_full)
    assert run(data, tmp_path, "--max_iters=6", "--ckpt_interval=4") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: disk full while writing"), err
    assert "(the previous ckpt_best.pt is intact)" in err[0] and "GB in" in err[0]
    assert err[0].endswith("then resume with --init_from=resume --resume_from=ckpt_best.pt")  # no ckpt.pt yet
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    monkeypatch.setattr(torch, "save", real)
    best = checkpoint.load_checkpoint(str(tmp_path / "ckpt_best.pt"))
    assert best["loop"]["iter_num"] == 2
    assert run(data, tmp_path, "--max_iters=6", "--ckpt_interval=4", "--init_from=resume",
               "--resume_from=ckpt_best.pt") == 0  # the advice, applied
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["iter_num"] == 6
