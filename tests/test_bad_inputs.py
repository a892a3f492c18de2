"""Bad inputs to train.py and to checkpoint loading: each fails with ONE clear line on stderr
(no traceback), a non-zero exit, no code run and nothing clobbered."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import runtime
import shards
import train
from conftest import REPO, SHARED_DATA
from test_train import TINY, make_dataset

MARKER = "pwned_marker"  # a file that would appear if any input were run as code


class Evil:
    """Unpickling this runs a shell command: what a malicious downloaded checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A dataset and a finished 1-iteration run in it (n_layer=2, block_size=32)."""
    root = tmp_path_factory.mktemp("bad")
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:40_000]
    (root / "data").mkdir()
    data = make_dataset(root / "data", text, val_docs=10)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={root / 'run'}", "--max_iters=1", "--eval_interval=1"]) == 0
    return root / "data", root / "run"


def copy_data(good, dst, replace_train=None):
    """A copy of the dataset with its train shards removed, and replaced by one .npy of `replace_train` if given."""
    shutil.copytree(good[0], dst)
    for p in shards.list_shards(str(dst), "train"):
        os.remove(p)
    if replace_train is not None:
        np.save(dst / "train_000000.npy", replace_train)
    return dst


def run_dir_with(good, dst, ckpt_bytes=None, ckpt_obj=None):
    """An out_dir whose ckpt.pt is the good one, given bytes, or a torch.save of an object."""
    dst.mkdir()
    if ckpt_bytes is not None:
        (dst / "ckpt.pt").write_bytes(ckpt_bytes)
    elif ckpt_obj is not None:
        torch.save(ckpt_obj, dst / "ckpt.pt")
    else:
        shutil.copy(good[1] / "ckpt.pt", dst / "ckpt.pt")
    return dst


def nanogpt_style(good):
    ckpt = runtime.load_checkpoint(str(good[1] / "ckpt.pt"))
    return {k: ckpt[k] for k in ("model", "model_args", "iter_num", "best_val_loss")}  # no 'format' key


def cases(good, tmp):
    """(name, extra args, expected text in the error). Each runs train.py in a fresh process."""
    d, run = str(good[0]), good[1]
    resume = ["--init_from=resume", f"--data_dir={d}"]
    good_bytes = (run / "ckpt.pt").read_bytes()
    return [
        ("missing data dir", [f"--data_dir={tmp / 'nope'}"], "does not exist"),
        ("empty data dir", [f"--data_dir={(tmp / 'empty').mkdir() or tmp / 'empty'}"], "no 'train' shards"),
        ("manifest but no shards", [f"--data_dir={copy_data(good, tmp / 'noshards')}"], "no 'train' shards"),
        ("empty shard", [f"--data_dir={copy_data(good, tmp / 'zero', np.zeros(0, np.uint16))}"], "fewer than one batch"),
        ("int32 shard", [f"--data_dir={copy_data(good, tmp / 'i32', np.arange(5000, dtype=np.int32))}"],
         "expected 1-D uint16"),
        ("ids >= vocab", [f"--data_dir={copy_data(good, tmp / 'vocab', np.full(5000, 60000, np.uint16))}"],
         "token id 60000 >= vocab size 50257"),
        ("unknown key", [f"--data_dir={d}", "--learning_rat=1e-3"], "did you mean 'learning_rate'"),
        ("wrong type", [f"--data_dir={d}", "--n_layer=two"], "n_layer must be int"),
        ("code in override", [f"--data_dir={d}", f"--batch_size=__import__('os').system('touch {MARKER}')"],
         "batch_size must be int"),
        ("missing checkpoint", [*resume, f"--out_dir={tmp / 'nockpt'}"], "no checkpoint at"),
        ("truncated checkpoint", [*resume, f"--out_dir={run_dir_with(good, tmp / 'trunc', good_bytes[:len(good_bytes) // 2])}"],
         "is corrupt or not a checkpoint"),
        ("random bytes", [*resume, f"--out_dir={run_dir_with(good, tmp / 'rand', os.urandom(4096))}"],
         "is corrupt or not a checkpoint"),
        ("nanoGPT checkpoint", [*resume, f"--out_dir={run_dir_with(good, tmp / 'nano', ckpt_obj=nanogpt_style(good))}"],
         "not a checkpoint of this toolkit"),
        ("malicious pickle", [*resume, f"--out_dir={run_dir_with(good, tmp / 'evil', ckpt_obj={'format': runtime.CKPT_FORMAT, 'x': Evil(MARKER)})}"],
         "not a checkpoint this code can load safely"),
        ("block_size too large", [*resume, f"--out_dir={run_dir_with(good, tmp / 'bs')}", "--block_size=64"],
         "cannot grow: use block_size <= 32"),
        ("other model shape", [*resume, f"--out_dir={run_dir_with(good, tmp / 'shape')}", "--n_layer=3"],
         "has n_layer=2 but the config says 3"),
    ]


def test_bad_inputs_fail_with_one_line(good, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    tried = []
    for name, extra, expected in cases(good, tmp_path):
        argv = TINY + [f"--out_dir={tmp_path / 'out'}", "--max_iters=2", *extra]
        r = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0, f"{name}: exit 0"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {r.stderr[-1500:]}"
        assert expected in lines[0], f"{name}: {lines[0]}"
        assert not (tmp_path / MARKER).exists(), f"{name}: code ran"
        tried.append(name)
    assert len(tried) == 16


def test_malicious_checkpoint_is_refused_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": runtime.CKPT_FORMAT, "version": runtime.CKPT_VERSION, "model": Evil(MARKER)}, path)
    with pytest.raises(runtime.CheckpointError, match="not a checkpoint this code can load safely"):
        runtime.load_checkpoint(str(path))
    assert not (tmp_path / MARKER).exists()
    torch.load(path, weights_only=False)  # proof the file is live: unrestricted unpickling does run it
    assert (tmp_path / MARKER).exists()


def test_resume_refusals_leave_the_checkpoint_untouched(good, tmp_path, capsys):
    out = run_dir_with(good, tmp_path / "run")
    before = (out / "ckpt.pt").read_bytes()
    assert train.run(TINY + [f"--data_dir={good[0]}", f"--out_dir={out}", "--init_from=resume", "--n_embd=64"]) == 1
    assert "has n_embd=32 but the config says 64" in capsys.readouterr().err
    assert (out / "ckpt.pt").read_bytes() == before


def test_corrupt_checkpoints_always_give_checkpoint_error(good, tmp_path):
    """Random bytes and every kind of cut-off file fail as CheckpointError, never another exception
    (torch.load raises IndexError, KeyError, ... on some random inputs)."""
    rng = np.random.default_rng(0)
    data = (good[1] / "ckpt.pt").read_bytes()
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 8192, 200)]
    blobs += [data[:int(n)] for n in rng.integers(0, len(data), 30)]
    path = tmp_path / "ckpt.pt"
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(runtime.CheckpointError, match="corrupt or not a checkpoint"):
            runtime.load_checkpoint(str(path))
