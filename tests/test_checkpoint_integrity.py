"""Checkpoints verified like shards (issue 37): a few flipped bytes inside a weight, or NaN weights, are refused by
every command in one line (exit 1) that names an intact checkpoint beside the damaged one and the settings that use
it; a NaN eval loss is exit 1, never a result; a full disk's figure is the size of a checkpoint with its optimizer
state, not of the first one (which has none)."""
import errno
import re
import struct
import zipfile

import pytest
import torch

import eval as eval_script
import export
import sample
import train
from conftest import shakespeare
from gptlib import checkpoint
from gptlib.errors import run_command
from test_train import TINY, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("integrity"), shakespeare()[:60_000], val_docs=20)


def trained(data, out, *extra):
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=2",
                             *extra]) == 0
    return out


def flip_bytes_inside(path, record_suffix, n=4):
    """Flip n bytes in the middle of a record's data inside the checkpoint's zip, as a bad disk would."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if i.filename.endswith(record_suffix)), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        chunk = bytes(b ^ 0x5A for b in f.read(n))
        f.seek(at)
        f.write(chunk)


def one_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    return err[0]


def test_flipped_bytes_inside_a_weight_are_refused_by_every_command(data, tmp_path, capsys):
    out = trained(data, tmp_path / "run")
    ckpt = out / "ckpt.pt"
    assert torch.load(ckpt, weights_only=True)  # torch.load alone does not see the damage below
    flip_bytes_inside(ckpt, "data/0")
    assert torch.load(ckpt, weights_only=True)["model"]  # still loads silently
    best_iter = checkpoint.load_checkpoint(str(out / "ckpt_best.pt"))["loop"]["iter_num"]
    line = one_error(capsys, run_command(train.main, TINY + [f"--data_dir={data}", f"--out_dir={out}",
                                                             "--max_iters=6", "--init_from=resume"]))
    assert "ckpt.pt is damaged" in line and "does not match the checksum" in line
    assert f"ckpt_best.pt (iter {best_iter}) with --resume_from=ckpt_best.pt" in line
    for main, argv in ((sample.main, [f"--init_from={ckpt}", "--max_new_tokens=2", "--num_samples=1"]),
                       (eval_script.main, [f"--init_from={ckpt}", "--max_tokens=64"]),
                       (export.main, [f"--init_from={ckpt}", f"--to={tmp_path / 'hf'}"])):
        line = one_error(capsys, run_command(main, argv))
        assert "is damaged" in line and f"--init_from={out / 'ckpt_best.pt'}" in line, line
    # the advice, applied: the run goes on from the intact checkpoint
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={out}", "--max_iters=6", "--init_from=resume",
                             "--resume_from=ckpt_best.pt"]) == 0


def test_nan_weights_are_refused_naming_the_tensor(data, tmp_path, capsys):
    out = trained(data, tmp_path)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["model"]["transformer.h.1.mlp.c_fc.weight"][3, :5] = float("nan")
    torch.save(ckpt, out / "nan.pt")
    for main, argv in ((sample.main, [f"--init_from={out / 'nan.pt'}", "--max_new_tokens=2"]),
                       (eval_script.main, [f"--init_from={out / 'nan.pt'}", "--max_tokens=64"])):
        line = one_error(capsys, run_command(main, argv))
        assert "NaN/inf in transformer.h.1.mlp.c_fc.weight (5 of " in line and "use an intact one beside it" in line


def test_a_nan_eval_loss_is_exit_1_not_a_result(data, tmp_path, capsys):
    """Finite weights whose activations overflow: eval.py used to print 'loss nan' and exit 0."""
    out = trained(data, tmp_path)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["model"]["transformer.wte.weight"].fill_(3e38)  # finite, but every sum of two overflows
    torch.save(ckpt, out / "overflow.pt")
    line = one_error(capsys, run_command(eval_script.main, [f"--init_from={out / 'overflow.pt'}", "--max_tokens=64",
                                                             f"--json_out={tmp_path / 'r.json'}"]))
    assert "the loss on val of" in line and "not finite" in line
    assert not (tmp_path / "r.json").exists()


def test_the_disk_full_figure_is_a_checkpoint_with_its_optimizer_state(data, tmp_path, capsys, monkeypatch):
    """The first checkpoint (ckpt_best.pt at iter 0) holds no optimizer state yet: the figure is that of a later one."""
    real = torch.save
    with monkeypatch.context() as m:
        m.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        rc = run_command(train.main, TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'a'}", "--max_iters=4",
                                             "--optimizer=muon"])
    line = one_error(capsys, rc)
    said = float(re.search(r"needs about ([0-9.e+-]+) GB", line).group(1)) * 1e9
    assert torch.save is real
    out = trained(data, tmp_path / "b", "--optimizer=muon")
    size = (out / "ckpt.pt").stat().st_size
    assert abs(said - size) <= 0.1 * size, (said, size)
