"""A nanoGPT run comes over (issue 17): a ckpt.pt written by nanoGPT's own train.py (../shared/peers/nanoGPT, run
here on CPU; it is run, never imported by the project) is read by sample.py, eval.py, export.py and train.py
through --init_from=PATH. Its logits equal nanoGPT's own forward; its export loads in transformers with
activation_function='gelu'; train.py continues its run with its iteration and AdamW moments."""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import torch

import eval as eval_script
import export
import sample
import train
from conftest import NANOGPT_DIR, shakespeare
from gptlib import checkpoint
from gptlib.errors import run_command
from test_train import TINY, make_dataset, metrics

PEER = NANOGPT_DIR
NANO_ARGS = ["--dataset=shk", "--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=2", "--n_head=2",
             "--n_embd=32", "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=1", "--max_iters=6",
             "--eval_interval=3", "--eval_iters=2", "--log_interval=1", "--always_save_checkpoint=True",
             "--out_dir=out", "--warmup_iters=1", "--lr_decay_iters=6", "--learning_rate=1e-3", "--min_lr=1e-4"]
FORWARD = """import sys, numpy as np, torch
from model import GPT, GPTConfig
ck = torch.load('out/ckpt.pt', map_location='cpu', weights_only=False)
m = GPT(GPTConfig(**ck['model_args']))
m.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ck['model'].items()})
m.eval()
x = torch.from_numpy(np.load('x.npy'))
with torch.no_grad():
    logits, _ = m(x, x)  # with targets nanoGPT returns every position's logits
np.save('logits.npy', logits.numpy())
"""


def nanogpt_folder(tmp_path_factory, name):
    """A fresh working folder holding nanoGPT's model.py, train.py and configurator.py (skipped without them)."""
    if not (PEER / "train.py").exists():
        pytest.skip(f"nanoGPT's scripts are not at {PEER}")
    work = tmp_path_factory.mktemp(name)
    for script in ("model.py", "train.py", "configurator.py"):
        shutil.copy(PEER / script, work / script)
    return work


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """nanoGPT's train.py, run for 6 iterations on Tiny Shakespeare tokens in its own working folder."""
    work = nanogpt_folder(tmp_path_factory, "nanogpt")
    ids = np.array(tiktoken.get_encoding("gpt2").encode_ordinary(shakespeare()[:60_000]),
                   dtype=np.uint16)
    (work / "data" / "shk").mkdir(parents=True)
    ids[:14_000].tofile(work / "data" / "shk" / "train.bin")
    ids[14_000:].tofile(work / "data" / "shk" / "val.bin")
    r = subprocess.run([sys.executable, "train.py", *NANO_ARGS], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.array(ids[:2 * 32], dtype=np.int64).reshape(2, 32)
    np.save(work / "x.npy", x)
    (work / "forward.py").write_text(FORWARD)
    r = subprocess.run([sys.executable, "forward.py"], cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    data = tmp_path_factory.mktemp("data")
    return work, str(work / "out" / "ckpt.pt"), make_dataset(data, shakespeare()[:60_000],
                                                              val_docs=20)


def test_logits_equal_nanogpts_own_forward(nano):
    work, path, _ = nano
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt["imported_from"] == "nanoGPT" and ckpt["model_args"]["mlp_act"] == "gelu_exact"
    assert ckpt["loop"]["iter_num"] == 6 and ckpt["model_args"]["bias"] is False  # nanoGPT's default
    model = checkpoint.model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        ours = model(torch.from_numpy(np.load(work / "x.npy")))[0]
    assert (ours - torch.from_numpy(np.load(work / "logits.npy"))).abs().max().item() < 1e-5


def test_sample_eval_and_export_read_it(nano, tmp_path, capsys):
    work, path, data = nano
    out = io.StringIO()
    sample.main([f"--init_from={path}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5", "--device=cpu"], out=out)
    assert out.getvalue().startswith("ROMEO:") and "imported from nanoGPT" in capsys.readouterr().err
    assert run_command(eval_script.main, [f"--init_from={path}", f"--data_dir={data}", "--device=cpu",
                                          f"--json_out={tmp_path / 'r.json'}"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"]["val"]["loss"] < 11
    transformers = pytest.importorskip("transformers")
    assert run_command(export.main, [f"--init_from={path}", f"--to={tmp_path / 'hf'}"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    x = torch.from_numpy(np.load(work / "x.npy"))
    with torch.no_grad():
        assert (hf(x).logits - torch.from_numpy(np.load(work / "logits.npy"))[..., :50257]).abs().max() < 1e-4


def test_train_continues_the_run_with_its_iteration_and_adamw_moments(nano, tmp_path, capsys):
    work, path, data = nano
    nano_ckpt = torch.load(path, map_location="cpu", weights_only=False)
    out = tmp_path / "run"
    args = TINY + [f"--data_dir={data}", f"--out_dir={out}", f"--init_from={path}", "--warmup_iters=0"]
    assert train.run(args + ["--max_iters=6"]) == 0  # at its own end already: evaluate and save, no step
    log = (out / "log.txt").read_text()
    assert "continuing nanoGPT's run" in log and "at iter 6" in log and "its optimizer state continues" in log
    ours = checkpoint.load_checkpoint(str(out / "ckpt.pt"))
    assert ours["loop"]["iter_num"] == 6 and ours["model_args"]["mlp_act"] == "gelu_exact"
    for i, s in nano_ckpt["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["adamw"]["state"][i]["exp_avg"], s["exp_avg"])
    assert train.run(args + ["--max_iters=9", "--init_from=resume"]) == 0  # and on from there, in this toolkit
    steps = metrics(out)
    assert [r["iter"] for r in steps] == [7, 8, 9] and all(np.isfinite(r["loss"]) for r in steps)


@pytest.fixture(scope="module")
def nano_char(tmp_path_factory):
    """nanoGPT's shakespeare_char kind of run: 65 characters as its vocabulary (its meta.pkl), 2 iterations."""
    import pickle
    work = nanogpt_folder(tmp_path_factory, "nanogpt_char")
    text = shakespeare()[:20_000]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    (work / "data" / "chr").mkdir(parents=True)
    ids[:16_000].tofile(work / "data" / "chr" / "train.bin")
    ids[16_000:].tofile(work / "data" / "chr" / "val.bin")
    with open(work / "data" / "chr" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)
    args = [a for a in NANO_ARGS if not a.startswith(("--dataset", "--max_iters", "--eval_interval", "--lr_decay"))]
    r = subprocess.run([sys.executable, "train.py", *args, "--dataset=chr", "--max_iters=2", "--eval_interval=2",
                        "--lr_decay_iters=2"], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return str(work / "out" / "ckpt.pt"), len(chars)


def test_a_character_level_checkpoint_on_gpt2_tokens_is_one_line_in_every_command(nano, nano_char, tmp_path, capsys):
    """A 65-token model fed GPT-2 ids failed deep in the embedding (IndexError) in train, sample and eval (issue 28):
    each refuses it now, in one line, before anything runs or is written; export writes it (without GPT-2's
    tokenizer files)."""
    path, vocab = nano_char
    assert checkpoint.load_checkpoint(path)["model_args"]["vocab_size"] == vocab < 100
    _, _, data = nano
    out = tmp_path / "run"
    for main, argv in ((train.main, TINY + [f"--data_dir={data}", f"--out_dir={out}", f"--init_from={path}"]),
                       (sample.main, [f"--init_from={path}", "--max_new_tokens=2", "--device=cpu"]),
                       (eval_script.main, [f"--init_from={path}", f"--data_dir={data}", "--device=cpu"])):
        assert run_command(main, argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path} has a {vocab}-token vocabulary"), err
        assert "GPT-2 tokens (ids up to 50,256)" in err[0]
    assert not out.exists()
    assert run_command(export.main, [f"--init_from={path}", f"--to={tmp_path / 'hf'}"]) == 0
    assert "tokenizer files not written" in capsys.readouterr().err
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == vocab


def test_a_recipe_that_asks_for_another_model_is_refused_with_overrides_that_work(nano, tmp_path, capsys):
    """config/recipe_modern.py on an adopted nanoGPT checkpoint ended in model.py's ValueError (issue 28). Now one line
    names each model setting the checkpoint's model lacks and the overrides that keep its model: applied, they run."""
    from conftest import REPO
    work, path, data = nano
    args = [str(REPO / "config" / "recipe_modern.py")] + TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}",
                                                                  f"--init_from={path}", "--max_iters=7", "--warmup_iters=0"]
    assert run_command(train.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pos_emb='rope' (it has 'learned')" in err[0], err
    keep = err[0].split("keep its model with ")[1].split(" (")[0].split()
    assert "--tie_weights=True" in keep and "--mlp_act=gelu_exact" in keep
    assert run_command(train.main, args + keep) == 0  # the recipe's Muon and WSD schedule stay
    ours = checkpoint.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert ours["loop"]["iter_num"] == 7 and ours["model_args"]["pos_emb"] == "learned"
    assert ours["config"]["optimizer"] == "muon"


def test_the_docs_paragraph_on_init_from_says_what_the_code_does(nano, tmp_path, capsys):
    """docs/training.md's paragraph on --init_from with a nanoGPT checkpoint (issue 37: it said 'whatever the size
    settings say', which the code no longer did): each claim it makes, checked against a run."""
    from conftest import REPO
    text = " ".join((REPO / "docs" / "training.md").read_text().split())
    for claim in ("Its model is the checkpoint's", "a model setting left at its default takes the checkpoint's value",
                  "is refused in one line that names the overrides keeping its model", "its iteration and best val loss",
                  "its AdamW moments when they fit this optimizer exactly", "with Muon", "the optimizer starts afresh",
                  "one that holds no run yet"):
        assert claim in text, claim
    work, path, data = nano
    base = TINY + [f"--data_dir={data}", f"--init_from={path}", "--warmup_iters=0", "--max_iters=8"]
    # a setting at its default takes the checkpoint's value (nanoGPT's bias=False, against our default True)
    assert train.run(base + [f"--out_dir={tmp_path / 'a'}"]) == 0
    ours = checkpoint.load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    assert ours["model_args"]["bias"] is False and ours["loop"]["iter_num"] == 8
    assert "at iter 6 (best val" in (tmp_path / "a" / "log.txt").read_text()  # its iteration and best val loss
    # a setting given another value is refused, naming the overrides that keep its model
    assert run_command(train.main, base + [f"--out_dir={tmp_path / 'b'}", "--n_embd=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_embd=64 (it has 32)" in err[0] and "keep its model with --n_embd=32" in err[0]
    # with Muon the AdamW moments cannot continue: afresh, in one line
    assert train.run(base + [f"--out_dir={tmp_path / 'c'}", "--optimizer=muon"]) == 0
    assert "the optimizer starts afresh" in (tmp_path / "c" / "log.txt").read_text()
    # an out_dir that holds a run is not a new one
    assert run_command(train.main, base + [f"--out_dir={tmp_path / 'a'}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
