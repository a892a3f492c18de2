"""Destinations on real filesystems (issue 18): a read-only tmpfs and a full one (a few MB). Every command that
writes gives one error line, no traceback, exit 1, and leaves nothing behind. Also: a refused prepare leaves its
directory as it found it, so the corrected command works; a .txt with one bad byte loses that document only;
a prompt longer than the context is cropped with a note. Mounting needs root (CI runs as root): skipped with the
reason where it is not allowed."""
import contextlib
import io
import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eval as eval_script
import export
import prepare_fineweb
import sample
import train
from conftest import shakespeare
from gptlib import shards
from gptlib.errors import run_command
from test_train import TINY, make_dataset


@contextlib.contextmanager
def tmpfs(path, size_kb, read_only=False):
    path.mkdir()
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs")
    (root / "data").mkdir()
    data = make_dataset(root / "data", shakespeare()[:40_000], val_docs=10)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={root / 'run'}", "--max_iters=1", "--eval_interval=1",
                             "--warmup_iters=1"]) == 0
    import random
    rng = random.Random(0)
    words = [w for w in shakespeare().split()[:5000]]
    docs = [" ".join(rng.choice(words) for _ in range(600)) for _ in range(400)]  # ~300K tokens: 600 KB of shards
    pq.write_table(pa.table({"text": docs}), root / "docs.parquet")
    return root, data


def one_line(capsys, rc, want_rc=1):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == want_rc and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def commands(root, data, dest):
    """(name, command, argv) writing under dest."""
    return [("prepare", prepare_fineweb.main, [f"--data_files={root / 'docs.parquet'}", f"--out_dir={dest / 'ds'}",
                                               "--val_tokens=100"]),
            ("train", train.main, TINY + [f"--data_dir={data}", f"--out_dir={dest / 'run'}", "--max_iters=2",
                                          "--warmup_iters=1"]),
            ("eval", eval_script.main, [f"--out_dir={root / 'run'}", "--max_tokens=64", f"--json_out={dest / 'r.json'}"]),
            ("export", export.main, [f"--out_dir={root / 'run'}", f"--to={dest / 'hf'}"])]


def test_read_only_destinations_are_one_line(env, tmp_path, capsys):
    root, data = env
    with tmpfs(tmp_path / "ro", 1024, read_only=True) as ro:
        for name, main, argv in commands(root, data, ro):
            line = one_line(capsys, run_command(main, argv))
            assert "Read-only file system" in line and "choose a destination on a writable disk" in line, (name, line)
            assert os.listdir(ro) == []


def test_full_disk_destinations_are_one_line_and_leave_nothing(env, tmp_path, capsys):
    """512 KB: a checkpoint of the tiny model needs about 20 MB, the prepare's shards about 600 KB, the export's
    safetensors about 7 MB."""
    root, data = env
    with tmpfs(tmp_path / "full", 512) as full:
        for name, main, argv in commands(root, data, full):
            if name == "eval":  # its json is small: fill the disk first
                with open(full / "filler", "wb") as f:
                    with contextlib.suppress(OSError):
                        f.write(b"\0" * 2**20)
            rc = run_command(main, argv)
            line = one_line(capsys, rc)
            assert any(w in line for w in ("disk full", "No space left on device")), (name, line)
            if name == "train":  # its first checkpoint: nothing to resume from (issue 28)
                assert "no checkpoint was written" in line and line.endswith("then run the same command again"), line
            left = sorted(os.listdir(full))
            assert left in ([], ["filler"]), (name, left)  # no config.json, log.txt, metrics.jsonl, stage, shards
            if (full / "filler").exists():
                os.remove(full / "filler")


def test_a_refused_prepare_leaves_nothing_and_the_corrected_run_works(env, tmp_path, capsys):
    root, _ = env
    pq.write_table(pa.table({"text": pa.array(list(range(30)), pa.int64())}), tmp_path / "textint.parquet")
    out = tmp_path / "ds"
    rc = run_command(prepare_fineweb.main, [f"--data_files={tmp_path / 'textint.parquet'}", f"--out_dir={out}",
                                            "--val_tokens=10"])
    assert "text column has type int64" in one_line(capsys, rc)
    assert not out.exists()  # no manifest.json binding the next run to the wrong input
    out.mkdir()  # a folder the user made beforehand stays, empty
    rc = run_command(prepare_fineweb.main, [f"--data_files={tmp_path / 'textint.parquet'}", f"--out_dir={out}",
                                            "--val_tokens=10"])
    one_line(capsys, rc)
    assert out.is_dir() and os.listdir(out) == []
    assert run_command(prepare_fineweb.main, [f"--data_files={root / 'docs.parquet'}", f"--out_dir={out}",
                                              "--val_tokens=100"]) == 0
    assert shards.check_dataset(str(out))["progress"]["complete"]


def test_a_bad_byte_in_a_txt_costs_that_document_only(tmp_path, capsys):
    good = "A good paragraph of text, repeated to have some tokens. " * 20
    (tmp_path / "mixed.txt").write_bytes((good + "\n\n").encode() * 30 + b"caf\xe9 latin-1\n\n" + (good + "\n").encode())
    assert run_command(prepare_fineweb.main, [f"--data_files={tmp_path / 'mixed.txt'}", f"--out_dir={tmp_path / 'ds'}",
                                              "--val_tokens=500"]) == 0
    m = shards.read_manifest(str(tmp_path / "ds"))
    assert m["skipped"]["invalid_utf8"] == 1 and sum(m["docs"].values()) == 31


def test_a_prompt_longer_than_the_context_is_cropped_with_one_note(env, capsys):
    root, _ = env
    out = io.StringIO()
    sample.main([f"--out_dir={root / 'run'}", "--start=" + "word " * 200, "--num_samples=1", "--max_new_tokens=3",
                 "--device=cpu"], out=out)
    err = capsys.readouterr().err
    assert err.count("note: the prompt is") == 1 and "the model's context is 32: it sees only the last 31" in err


def test_eval_with_a_huge_batch_evaluates_instead_of_skipping_everything(env, capsys):
    root, _ = env
    assert run_command(eval_script.main, [f"--out_dir={root / 'run'}", "--batch_size=100000", "--max_tokens=128",
                                          f"--json_out={root / 'big.json'}"]) == 0
    assert json.loads((root / "big.json").read_text())["results"]["val"]["tokens"] == 128
