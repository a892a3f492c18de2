"""Every except branch that formats a message is run by a test (issue 28): the branches a coverage audit of the
suite found unrun in-process (2026-12-04: 20 of 41), each given the input that reaches it. Each is one error line,
no traceback. (Branches reached only in a child process, by signals or on a GPU, are tested elsewhere.)"""
import json
import os

import pytest
import torch

import eval as eval_script
import prepare_fineweb
import sample
import train
from gptlib import checkpoint
from gptlib.errors import run_command
from test_fault_matrix import TINY, inputs  # noqa: F401 (a fixture)


def one_error(capsys, code, says, want_code=None):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith(("error", "Traceback"))]
    assert code != 0 and (want_code is None or code == want_code) and len(err) == 1, err
    assert err[0].startswith("error:") and says in err[0], err
    return err[0]


@pytest.mark.parametrize("line, says", [
    ("learning_rate = 2.0 ** 5000", "the result is too large for a number"),  # float power overflow
    ("batch_size = 4 - 'a'", "cannot apply Sub to 4 and 'a'"),
    ("batch_size = int('four')", "invalid literal for int()"),
    ("batch_size = (", "syntax error"),
    ("learning_rate = 10 ** 300 * 10 ** 300", "too large"),
])
def test_config_file_arithmetic_and_syntax_errors(tmp_path, capsys, line, says):
    cfg = tmp_path / "c.py"
    cfg.write_text(line + "\n")
    one_error(capsys, run_command(train.main, [str(cfg), "--plan"]), says, want_code=2)


def test_an_unreadable_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{not json")
    (tmp_path / "data" / "train_000000.npy").write_bytes(b"")
    code = run_command(train.main, TINY + [f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}"])
    one_error(capsys, code, "is not readable JSON")


def test_a_checkpoint_from_a_newer_model_py_is_one_line(inputs, tmp_path, capsys):
    ckpt = torch.load(os.path.join(inputs["run"], "ckpt.pt"), weights_only=True)
    ckpt["model_args"]["a_setting_from_the_future"] = 1
    torch.save(ckpt, tmp_path / "new.pt")
    code = run_command(sample.main, [f"--init_from={tmp_path / 'new.pt'}", "--max_new_tokens=2", "--device=cpu"])
    one_error(capsys, code, "cannot be built by this model.py")


def test_an_optimizer_state_that_does_not_fit_is_one_line_on_resume(inputs, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run)
    ckpt = checkpoint.load_checkpoint(str(run / "ckpt.pt"))
    ckpt["optimizer"]["adamw"]["param_groups"] = ckpt["optimizer"]["adamw"]["param_groups"][:1]
    checkpoint.save_checkpoint(str(run / "ckpt.pt"), {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    if (run / "ckpt_best.pt").exists():
        os.remove(run / "ckpt_best.pt")
    args = TINY + ["--max_iters=3", "--warmup_iters=1", f"--data_dir={inputs['data']}", f"--out_dir={run}",
                   "--total_batch_size=64", "--eval_tokens=64", "--init_from=resume"]
    one_error(capsys, run_command(train.main, args), "optimizer state does not fit this optimizer")


def test_the_hub_offline_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    """HellaSwag's download and the hub listing of prepare, with the hub unreachable (HF_HUB_OFFLINE)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # nothing cached
    code = run_command(eval_script.main, [f"--out_dir={inputs['run']}", "--hellaswag", "--device=cpu"])
    one_error(capsys, code, "HellaSwag")
    code = run_command(prepare_fineweb.main, ["--num_files=1", f"--out_dir={tmp_path / 'fw'}"])
    one_error(capsys, code, "HuggingFaceFW/fineweb")
    assert not (tmp_path / "fw").exists()


def test_a_dataset_folder_whose_manifest_is_unreadable_is_one_line_in_prepare(inputs, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text("[broken")
    code = run_command(prepare_fineweb.main, [f"--data_files={inputs['parquet']}", f"--out_dir={out}",
                                              "--val_tokens=100"])
    one_error(capsys, code, "is not readable JSON")
    assert json.loads("[]") == [] and (out / "manifest.json").read_text() == "[broken"
