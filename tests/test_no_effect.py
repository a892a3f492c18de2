"""No setting is ignored silently (issue 37): a setting given a value that does nothing in this run is one note in
the run's log (or on stderr), and one that signals a mistake is an error."""
import pytest

import eval as eval_script
import sample
import train
from conftest import shakespeare
from gptlib.errors import run_command
from gptlib.settings import load_config, no_effect_notes
from gptlib.train_settings import TrainConfig
from test_train import TINY, make_dataset

# a value for each setting TrainConfig.no_effect can name, with the settings that make it inert
INERT = {
    "sharding": (["--sharding=optimizer"], "this run is one process"),
    "backend": (["--backend=gloo"], "this run is one process"),
    "dist_timeout_min": (["--dist_timeout_min=5"], "this run is one process"),
    "muon_lr": (["--muon_lr=0.05"], "optimizer='adamw' has no Muon"),
    "muon_momentum_warmup": (["--muon_momentum_warmup=10"], "optimizer='adamw' has no Muon"),
    "table_lr": (["--table_lr=0.1"], "no value-embedding or bigram tables"),
    "decay_frac": (["--decay_frac=0.5"], "lr_schedule='cosine' does not read it"),
    "lr_decay_iters": (["--lr_schedule=wsd", "--lr_decay_iters=9", "--warmup_iters=0"], "lr_schedule='wsd' does not read it"),
    "hellaswag_path": (["--hellaswag_path=h.jsonl"], "hellaswag_interval=0"),
    "humaneval_path": (["--humaneval_path=h.jsonl.gz"], "humaneval_interval=0"),
    "wandb_project": (["--wandb_project=x"], "wandb_log=False"),
    "rope_base": (["--rope_base=500"], "pos_emb='learned' has no rotary angles"),
    "eot_token": (["--eot_token=0"], "only doc_mask reads it"),
    "overwrite": (["--init_from=resume", "--overwrite=True"], "a resume replaces only what its own run wrote"),
}


@pytest.mark.parametrize("name", list(INERT))
def test_each_inert_setting_is_noted_and_nothing_else(name):
    argv, why = INERT[name]
    notes = no_effect_notes(load_config(TrainConfig, argv), world=1)
    assert len(notes) == 1 and notes[0].startswith(f"note: {name}=") and why in notes[0], notes


def test_the_same_settings_in_force_are_not_noted():
    assert no_effect_notes(load_config(TrainConfig, ["--sharding=optimizer"]), world=2) == []  # under torchrun
    assert no_effect_notes(load_config(TrainConfig, ["--optimizer=muon", "--muon_lr=0.05"]), world=1) == []
    assert no_effect_notes(load_config(TrainConfig, []), world=1) == []  # defaults say nothing


def test_sharding_without_torchrun_is_a_note_in_the_run_log(tmp_path):
    data = make_dataset(tmp_path, shakespeare()[:40_000], val_docs=20)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2",
                             "--sharding=optimizer"]) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "note: sharding='optimizer' has no effect here: this run is one process" in log


def test_resume_from_without_a_resume_is_an_error_whose_fix_works(tmp_path, capsys):
    data = make_dataset(tmp_path, shakespeare()[:40_000], val_docs=20)
    args = TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2"]
    assert train.run(args) == 0
    assert run_command(train.main, args + ["--max_iters=3", "--resume_from=ckpt_best.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "continue from it with --init_from=resume" in err[0], err
    assert train.run(args + ["--max_iters=3", "--resume_from=ckpt_best.pt", "--init_from=resume"]) == 0


def test_sample_and_eval_note_what_they_ignore(tmp_path, capsys):
    data = make_dataset(tmp_path, shakespeare()[:40_000], val_docs=20)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2"]) == 0
    capsys.readouterr()
    assert sample.main([f"--out_dir={tmp_path / 'run'}", "--temperature=0", "--top_k=5", "--max_new_tokens=2",
                        "--num_samples=1"]) is None
    assert "note: top_k=5 has no effect here: temperature=0" in capsys.readouterr().err
    eval_script.main([f"--out_dir={tmp_path / 'run'}", "--max_tokens=64", "--hellaswag_path=x.jsonl"])
    assert "note: hellaswag_path='x.jsonl' has no effect here: HellaSwag runs with --hellaswag" in capsys.readouterr().err
