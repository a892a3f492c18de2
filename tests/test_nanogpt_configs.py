"""nanoGPT's configs and flags, as its users have them (issue 28): every name of nanoGPT's train.py, sample.py and
configurator is accepted, translated into this toolkit's settings, and the translation said once, in one line.
The config files below are written here with the names and values of nanoGPT's shipped configs (train_gpt2,
train_shakespeare_char, finetune_shakespeare, eval_gpt2*), not copied from it."""
import json

import pytest

import eval as eval_script
import sample
import train
from gptlib.errors import run_command
from conftest import shakespeare
from test_train import TINY, make_dataset

TRAIN_GPT2 = """# GPT-2 124M on OpenWebText, 8 GPUs
wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
max_iters = 600000
lr_decay_iters = 600000
eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
"""
SHAKESPEARE_CHAR = """out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
"""
FINETUNE = """import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl'
always_save_checkpoint = False
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
decay_lr = False
"""
EVAL_GPT2 = """batch_size = 8
eval_iters = 500
eval_only = True
wandb_log = False
init_from = '{model}'
"""


def dataset(tmp_path):
    (tmp_path / "data").mkdir()
    return make_dataset(tmp_path / "data", shakespeare()[:40_000], val_docs=10)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,text,expect", [
    ("train_gpt2.py", TRAIN_GPT2, ["gradient_accumulation_steps=40 -> total_batch_size=491,520 tokens a step",
                                   "eval_iters=200 -> eval_tokens=2,457,600"]),
    ("train_shakespeare_char.py", SHAKESPEARE_CHAR, ["dataset='shakespeare_char' -> data_dir='data/shakespeare_char'",
                                                     "always_save_checkpoint=False -> no meaning here",
                                                     "eval_iters=200 -> eval_tokens=3,276,800"]),
    ("finetune_shakespeare.py", FINETUNE, ["decay_lr=False -> min_lr=learning_rate, warmup_iters=0",
                                           "gradient_accumulation_steps=32 -> total_batch_size=32,768"]),
])
def test_nanogpts_train_configs_reach_the_plan_with_one_line_of_translation(tmp_path, capsys, name, text, expect):
    assert train.run([write(tmp_path, name, text), "--plan"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("nanoGPT settings:")]
    assert len(lines) == 1 and all(e in lines[0] for e in expect), lines  # every name at once, in one line
    assert "unknown setting" not in out


def test_the_translation_is_what_the_run_uses_and_a_later_setting_of_ours_wins(tmp_path, capsys):
    data = dataset(tmp_path)
    cfg = write(tmp_path, "nano.py", "gradient_accumulation_steps = 2\neval_iters = 3\ndecay_lr = False\n"
                                     "always_save_checkpoint = True\n")
    out = tmp_path / "run"
    args = TINY + [cfg, f"--data_dir={data}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2"]
    assert train.run(args) == 0
    conf = json.loads((out / "config.json").read_text())
    conf = conf.get("config", conf)
    assert conf["total_batch_size"] == 2 * 4 * 32 and conf["eval_tokens"] == 3 * 4 * 32  # x batch_size x block_size
    assert conf["min_lr"] == conf["learning_rate"] and conf["warmup_iters"] == 0  # nanoGPT's constant rate
    assert "nanoGPT settings: gradient_accumulation_steps=2" in (out / "log.txt").read_text()
    capsys.readouterr()
    # our own name given after the nanoGPT one wins, and the line says so
    assert train.run([cfg, "--eval_tokens=64", "--plan"]) == 0
    assert "eval_iters=3 -> eval_tokens=24,576 (x batch_size 8 x block_size 1024) (your later eval_tokens kept)" in \
        capsys.readouterr().out
    # the other way round, the nanoGPT name (translated at the end, from the final sizes) wins
    assert train.run(["--eval_tokens=64", cfg, "--plan"]) == 0
    assert "your later" not in capsys.readouterr().out


def test_eval_configs_refuse_train_py_in_one_line_whose_advice_works(tmp_path, capsys):
    """nanoGPT evaluates with train.py and eval_only=True; here eval.py reads the same file. Its advice, applied
    (eval.py, the same config, a checkpoint), gets past the error and scores eval_iters' worth of tokens."""
    data = dataset(tmp_path)
    run = tmp_path / "run"
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={run}", "--max_iters=2"]) == 0
    for model in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        cfg = write(tmp_path, f"eval_{model}.py", EVAL_GPT2.format(model=model))
        capsys.readouterr()
        assert run_command(train.main, [cfg, "--plan"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: eval_only=True (nanoGPT)") and "eval.py" in err[0]
    result = tmp_path / "r.json"
    assert run_command(eval_script.main, [cfg, f"--init_from={run / 'ckpt.pt'}", "--device=cpu",
                                          "--eval_iters=2", f"--json_out={result}"]) == 0
    out = capsys.readouterr().out
    assert "eval_iters=2 -> max_tokens=16,384 per split (x batch_size 8 x block_size 1024)" in out  # nanoGPT's 1024
    assert "eval_only=True -> no meaning here: eval.py only evaluates" in out
    assert json.loads(result.read_text())["results"]["val"]["tokens"] > 0


def test_sample_takes_nanogpts_flags(tmp_path, capsys):
    data = dataset(tmp_path)
    run = tmp_path / "run"
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={run}", "--max_iters=2"]) == 0
    capsys.readouterr()
    assert run_command(sample.main, [f"--out_dir={run}", "--device=cpu", "--compile=False", "--num_samples=1",
                                     "--max_new_tokens=4", "--start=To be"]) == 0
    assert "compile=False -> no meaning here: sample.py runs eager" in capsys.readouterr().out


def test_config_helpers_are_allowed_and_every_unknown_name_is_reported_at_once(tmp_path, capsys):
    cfg = write(tmp_path, "h.py", "n_gpu = 4\nbatch_size = 2 * n_gpu\nmax_iters = 1000\n")
    assert train.run([cfg, "--plan"]) == 0  # n_gpu is a helper: a later value uses it
    capsys.readouterr()
    bad = write(tmp_path, "bad.py", "batch_sise = 4\nlearnin_rate = 1e-3\nimport os\n")
    assert run_command(train.main, [bad, "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config files may only hold" in err[0]  # `import os` is refused, not only `time`
    bad = write(tmp_path, "bad2.py", "batch_sise = 4\nlearnin_rate = 1e-3\n")
    assert run_command(train.main, [bad, "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'batch_sise'; did you mean 'batch_size'?" in err[0] and \
        "'learnin_rate'; did you mean 'learning_rate'?" in err[0]
