"""train.py end to end on a tiny model and real text: loss falls, exact resume, best
checkpoint, early stopping, extension, and clear errors for bad configs."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import tiktoken
import torch

from gptlib import checkpoint, optim, schedules
from gptlib.settings import load_config
from gptlib.train_settings import TrainConfig
from gptlib import shards
from gptlib.loader import TokenLoader
import train
from conftest import REPO, shakespeare as shakespeare_text

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--total_batch_size=256", "--compile=False", "--device=cpu", "--eval_tokens=256", "--log_interval=1",
        "--warmup_iters=2", "--learning_rate=3e-3", "--min_lr=3e-4"]


def make_dataset(path, text, val_docs=40, shard_tokens=20_000):
    """Shards of real text: paragraphs as documents, EOT before each."""
    enc = tiktoken.get_encoding("gpt2")
    docs = [d for d in text.split("\n\n") if d.strip()]
    manifest = shards.new_manifest({"test": True})
    for split, part in (("val", docs[:val_docs]), ("train", docs[val_docs:])):
        w = shards.ShardWriter(str(path), split, shard_tokens=shard_tokens)
        for d in part:
            w.add([shards.EOT] + enc.encode_ordinary(d))
        manifest["shards"].update(w.close())
        manifest["checksums"].update(w.checksums)
    shards.write_manifest(str(path), manifest)
    return str(path)


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory, request):
    text = shakespeare_text()[:300_000]
    return make_dataset(tmp_path_factory.mktemp("shk"), text)


def run_train(data_dir, out_dir, *extra):
    rc = train.run(TINY + [f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra])
    return rc


def metrics(out_dir, kind="train"):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_loss_falls(shakespeare, tmp_path):
    assert run_train(shakespeare, tmp_path, "--max_iters=40", "--eval_interval=20") == 0
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 40
    assert abs(losses[0] - torch.log(torch.tensor(50257.0)).item()) < 1.0  # ~ln(vocab) at init
    assert sum(losses[-5:]) / 5 < losses[0] - 2.0
    evals = metrics(tmp_path, "eval")
    assert [e["iter"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val/val"] < evals[0]["val/val"] - 2.0
    assert evals[0]["train_loss"] is None and evals[1]["train_loss"] == pytest.approx(sum(losses[:20]) / 20)
    log = (tmp_path / "log.txt").read_text()
    assert "iter      40 | loss" in log and "tok/s" in log and "eta" in log
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["loop"]["iter_num"] == 40 and json.load(open(tmp_path / "config.json"))["max_iters"] == 40


def test_exact_resume(shakespeare, tmp_path):
    """N iterations straight == k iterations, stop, resume to N: identical losses (fp32 CPU), with dropout
    on so the RNG state matters, across an epoch boundary of the loader."""
    common = ["--dropout=0.1", "--lr_decay_iters=24", "--eval_interval=4", "--total_batch_size=512"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert run_train(shakespeare, straight, "--max_iters=24", *common) == 0
    assert run_train(shakespeare, resumed, "--max_iters=10", *common) == 0
    assert run_train(shakespeare, resumed, "--max_iters=24", "--init_from=resume", *common) == 0
    a, b = metrics(straight), metrics(resumed)
    assert [r["iter"] for r in b] == list(range(1, 25))  # no duplicate or missing iterations
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    evals_a = {r["iter"]: r["val/val"] for r in metrics(straight, "eval")}
    evals_b = {r["iter"]: r["val/val"] for r in metrics(resumed, "eval")}
    assert evals_b.pop(10) and evals_a == evals_b  # the stopped run also evaluated at its last iteration, 10
    # the eval-line train loss is the mean since the previous eval (so 11-12 after the extra eval at 10)
    train_a = {r["iter"]: r["train_loss"] for r in metrics(straight, "eval") if r["iter"] > 12}
    assert train_a == {r["iter"]: r["train_loss"] for r in metrics(resumed, "eval") if r["iter"] > 12}
    wa = checkpoint.load_checkpoint(str(straight / "ckpt.pt"))["model"]
    wb = checkpoint.load_checkpoint(str(resumed / "ckpt.pt"))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_extend_run_recomputes_schedule(shakespeare, tmp_path):
    assert run_train(shakespeare, tmp_path, "--max_iters=6", "--eval_interval=3") == 0
    assert schedules.lr_at(6, load_config(TrainConfig, TINY + ["--max_iters=6"])) == pytest.approx(3e-4)
    assert run_train(shakespeare, tmp_path, "--max_iters=12", "--eval_interval=3", "--init_from=resume") == 0
    lrs = [r["lr"] for r in metrics(tmp_path)]
    assert len(lrs) == 12 and lrs[6] > lrs[11] > 3e-4 * 0.999  # decays again over the longer run
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["iter_num"] == 12


def test_best_checkpoint_tracks_min_val(shakespeare, tmp_path):
    # a learning rate this high makes val loss go up and down, so best != last
    assert run_train(shakespeare, tmp_path, "--max_iters=30", "--eval_interval=3", "--learning_rate=0.05",
                     "--min_lr=0.05", "--grad_clip=0") == 0
    evals = metrics(tmp_path, "eval")
    best = min(evals, key=lambda r: r["val/val"])
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt_best.pt"))
    assert ckpt["loop"]["iter_num"] == best["iter"]
    assert ckpt["loop"]["best_val"] == pytest.approx(best["val/val"])
    assert [r["iter"] for r in evals if r["best"]][-1] == best["iter"]


def test_early_stopping(shakespeare, tmp_path, monkeypatch):
    # the val loss gets worse after the second eval: patience 2 stops at the 2nd eval after the best
    from gptlib import evals as evals_mod
    real, calls = evals_mod.eval_val_sets, []

    def worse_after_two(*a, **k):
        calls.append(1)
        return {name: dataclasses.replace(r, loss=r.loss + (len(calls) > 2) * len(calls))
                for name, r in real(*a, **k).items()}
    monkeypatch.setattr(evals_mod, "eval_val_sets", worse_after_two)
    assert run_train(shakespeare, tmp_path, "--max_iters=100", "--eval_interval=2", "--early_stop_patience=2") == 0
    evals = metrics(tmp_path, "eval")
    assert [r["best"] for r in evals] == [True, True, False, False]
    assert len(evals) < 10 and checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["iter_num"] < 20
    assert "early stop" in (tmp_path / "log.txt").read_text()
    assert os.path.exists(tmp_path / "ckpt_best.pt")


def test_refuses_to_clobber_a_run(shakespeare, tmp_path, capsys):
    assert run_train(shakespeare, tmp_path, "--max_iters=2", "--eval_interval=2") == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    assert run_train(shakespeare, tmp_path, "--max_iters=2") == 2
    assert "--init_from=resume" in capsys.readouterr().err
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--batch_sise=4"], "unknown setting 'batch_sise'; did you mean 'batch_size'?"),
    (["--batch_size=abc"], "batch_size must be int, got 'abc'"),
    (["--compile=maybe"], "compile must be bool"),
    (["--learning_rate=__import__('os').system('echo pwned')"], "learning_rate must be float"),
])
def test_config_errors(args, message):
    r = cli(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"]  # one line
    assert message in r.stderr and "pwned" not in r.stdout  # the override was never run


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("batch_size = 8\nlearning_rat = 1e-3\n")
    r = cli(str(bad))
    assert r.returncode == 2 and "unknown setting 'learning_rat'; did you mean 'learning_rate'?" in r.stderr
    bad.write_text("import os\n")
    r = cli(str(bad))
    assert r.returncode == 2 and "only hold `name = value` lines" in r.stderr
    good = tmp_path / "good.py"
    good.write_text("batch_size = 4\nblock_size = 64\ntotal_batch_size = batch_size * block_size * 2\n")
    cfg = load_config(TrainConfig, [str(good), "--batch_size=2"])
    assert (cfg.batch_size, cfg.total_batch_size) == (2, 512)  # files and overrides apply in order


def test_shipped_configs_parse_and_divide():
    """Every shipped config loads, and its total batch divides evenly on 1 GPU."""
    configs = sorted((REPO / "config").glob("*.py"))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(TrainConfig, [str(path)])
        assert cfg.total_batch_size % (cfg.batch_size * cfg.block_size) == 0, path.name


def test_plan_prints_and_exits_without_training(shakespeare, tmp_path, capsys):
    assert run_train(shakespeare, tmp_path, "--max_iters=500", "--plan", "--tokens_per_sec=1000") == 0
    out = capsys.readouterr().out
    # 256 tokens/step x 500 = 128K tokens; epochs over the manifest's train tokens; 128 s at 1000 tok/s
    assert "256  x  max_iters: 500  =  128K tokens" in out
    assert "Chinchilla" in out and "epochs" in out and "this run 2.1 min" in out
    assert not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_finetune_from_gpt2_then_resume(shakespeare, tmp_path):
    """init_from='gpt2' through the real huggingface_hub path (offline cache), then resume that run: the
    checkpoint keeps GPT-2's 50257 vocabulary, which resuming with the default config must accept."""
    from test_pretrained import TINY_HF, openai_layout, put_in_hub_cache, safetensors_bytes
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    source = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32))
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "openai-community/gpt2", {
        "config.json": json.dumps(TINY_HF).encode(),
        "model.safetensors": safetensors_bytes(openai_layout(source), tmp_path)})
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = tmp_path / "ft"
    args = TINY + [f"--data_dir={shakespeare}", f"--out_dir={out}", "--eval_interval=3"]
    for extra in (["--init_from=gpt2", "--max_iters=3"], ["--init_from=resume", "--max_iters=6"]):
        r = subprocess.run([sys.executable, "train.py", *args, *extra], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    ckpt = checkpoint.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["loop"]["iter_num"] == 6 and ckpt["model_args"]["vocab_size"] == 50257
    assert ckpt["model_args"]["block_size"] == 32  # cropped from GPT-2's 64 to the run's block_size
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 6 and losses[0] < 11.5


def test_log_interval_averages_the_steps_it_covers(shakespeare, tmp_path):
    """With log_interval=5 a logged loss is the mean of its 5 steps, not the last step's (spiky) loss."""
    every, fifth = tmp_path / "every", tmp_path / "fifth"
    assert run_train(shakespeare, every, "--max_iters=10", "--eval_interval=10") == 0
    assert run_train(shakespeare, fifth, "--max_iters=10", "--eval_interval=10", "--log_interval=5") == 0
    steps = [r["loss"] for r in metrics(every)]
    logged = metrics(fifth)
    assert [r["iter"] for r in logged] == [5, 10]
    assert [r["loss"] for r in logged] == pytest.approx([sum(steps[:5]) / 5, sum(steps[5:]) / 5], rel=1e-12)


def test_plan_works_before_any_data_is_prepared(tmp_path, capsys):
    """--plan is how a user decides how much to download: it needs no dataset and writes nothing."""
    assert train.run(TINY + [f"--data_dir={tmp_path / 'not-yet'}", f"--out_dir={tmp_path / 'out'}", "--plan",
                             "--max_iters=1000", "--tokens_per_sec=512"]) == 0
    out = capsys.readouterr().out
    assert "256  x  max_iters: 1,000  =  256K tokens" in out and "this run 8.3 min" in out
    assert "not prepared yet" in out and "epochs" in out
    assert sorted(os.listdir(tmp_path)) == []


def test_version_1_checkpoint_resumes(shakespeare, tmp_path):
    """A checkpoint written before the loop state became one unit (version 1: its fields at the top level)
    still resumes, and continues exactly as a version 2 checkpoint does."""
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    assert run_train(shakespeare, v2, "--max_iters=4", "--eval_interval=2") == 0
    v1.mkdir()
    ckpt = checkpoint.load_checkpoint(str(v2 / "ckpt.pt"))
    loop = ckpt.pop("loop")
    old = {**ckpt, "version": 1, "iter_num": loop["iter_num"], "best_val_loss": loop["best_val"],
           "bad_evals": loop["bad_evals"], "last_eval_iter": loop["last_eval_iter"], "loss_ema": loop["loss_ema"],
           "train_loss_sum": loop["train_loss_sum"], "train_loss_n": loop["train_loss_n"], "loader": loop["loader"],
           "rng": {"torch": torch.get_rng_state()}}
    del old["dtype"]
    torch.save(old, v1 / "ckpt.pt")
    for d in (v1, v2):
        assert run_train(shakespeare, d, "--max_iters=6", "--eval_interval=2", "--init_from=resume") == 0
    assert [r["loss"] for r in metrics(v1)] == [r["loss"] for r in metrics(v2)][-2:]
    old["version"] = 99
    torch.save(old, v1 / "ckpt.pt")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint version 99, this code reads versions 1 and 2"):
        checkpoint.load_checkpoint(str(v1 / "ckpt.pt"))


def test_a_refused_tracker_writes_nothing(shakespeare, tmp_path, monkeypatch):
    """tensorboard_log=True without tensorboard used to leave config.json, log.txt and metrics.jsonl behind."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `from torch.utils.tensorboard import` fails
    out = tmp_path / "run"
    assert run_train(shakespeare, out, "--max_iters=1", "--warmup_iters=1", "--tensorboard_log=True") == 1
    assert not out.exists()


def test_training_val_loss_matches_eval_py_on_the_whole_split_when_the_first_batches_mislead(tmp_path):
    """The val split starts with 3,000 random token ids (a 'repository' unlike everything else) and goes on
    with Shakespeare. Training used to score only the first batches: that reads the random block alone. Now
    the eval sample is spread over the split: the run's final val loss is close to eval.py's whole-split
    figure on the same checkpoint, while the first batches alone are far off."""
    import numpy as np
    import eval as eval_script
    enc = tiktoken.get_encoding("gpt2")
    docs = [d for d in shakespeare_text()[:600_000].split("\n\n") if d.strip()]
    data = tmp_path / "data"
    data.mkdir()
    manifest = shards.new_manifest({"test": "misleading first batches"})
    rng = np.random.default_rng(0)
    for split, part in (("val", docs[:700]), ("train", docs[700:])):
        w = shards.ShardWriter(str(data), split, shard_tokens=50_000)
        if split == "val":
            w.add(np.concatenate([[shards.EOT], rng.integers(0, 50257, 3000)]))
        for d in part:
            w.add([shards.EOT] + enc.encode_ordinary(d))
        manifest["shards"].update(w.close())
        manifest["checksums"].update(w.checksums)
    shards.write_manifest(str(data), manifest)
    out = tmp_path / "run"
    assert run_train(data, out, "--max_iters=60", "--eval_interval=30", "--eval_tokens=4096") == 0
    final = metrics(out, "eval")[-1]
    assert final["val_tokens/val"] == 4096 and final["val_stderr/val"] > 0
    assert eval_script.main([f"--out_dir={out}", "--device=cpu", f"--json_out={tmp_path / 'r.json'}"]) is None
    whole = json.loads((tmp_path / "r.json").read_text())["results"]["val"]
    model = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(str(out / "ckpt_best.pt")))
    loader = TokenLoader(str(data), "val", 4, 32, shuffle=False)  # the old way: the split's first 2 batches of 4 x 32
    with torch.no_grad():
        first = np.mean([model(*loader.next_batch())[1].item() for _ in range(2)])
    assert whole["tokens"] > 20_000 and abs(final["val/val"] - whole["loss"]) < 0.05, (final["val/val"], whole)
    assert first - whole["loss"] > 1.0  # what the run used to report was more than a nat off
