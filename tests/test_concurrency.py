"""Two processes on one directory, with real processes: a second train.py on a running run's out_dir, a
prepare (even --overwrite) under a running train.py, a train.py or prepare on a dataset another prepare is
writing; locks of killed processes taken over; a shard truncated under a running train.py."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from gptlib import checkpoint, shards
from gptlib.locks import LOCK_NAME
import train
from conftest import REPO, TEST_DATA, shakespeare
from test_faults import args, start_train, wait_for_iter
from test_train import make_dataset


@pytest.fixture()
def data(tmp_path):
    text = shakespeare()[:80_000]
    (tmp_path / "data").mkdir()
    return make_dataset(tmp_path / "data", text, val_docs=20)


def command(script, *argv):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, script, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def digest(directory):
    """Every file of a directory (but its lock) with a hash of its bytes."""
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in sorted(os.listdir(directory))
            if n != LOCK_NAME}


def refused(result, holder):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"is in use by {holder}" in lines[0], result.stderr


def test_second_run_and_prepare_refused_while_training_then_kill9_lock_taken_over(data, tmp_path):
    out = tmp_path / "run"
    first = start_train(args(data, out, "--max_iters=100000", "--ckpt_interval=2", "--eval_interval=1000"))
    try:
        wait_for_iter(first, out, 3)
        holder = f"train.py (pid {first.pid})"
        log_before = (out / "log.txt").read_text()
        # a second run, from scratch (overwrite) or resuming, is refused and writes nothing
        for extra in (["--overwrite=True"], ["--init_from=resume"]):
            refused(command("train.py", *args(data, out, "--max_iters=5", *extra)), holder)
        assert (out / "log.txt").read_text().startswith(log_before)
        iters = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
        assert len(iters) == len(set(iters))  # no iteration written twice
        # prepare --overwrite into the dataset the run reads is refused, and the shards stay as they were
        data_dir = tmp_path / "data"
        before = digest(data_dir)
        refused(command("prepare_fineweb.py", f"--data_files={TEST_DATA / 'fineweb_sample.parquet'}",
                        f"--out_dir={data_dir}", "--overwrite=True"), f"a process reading it (pid {first.pid})")
        assert digest(data_dir) == before
    finally:
        first.kill()  # kill -9: the lock is released by the kernel, its file stays
        first.wait()
    assert (out / LOCK_NAME).exists()
    done = checkpoint.load_checkpoint(str(out / "ckpt.pt"))["loop"]["iter_num"]
    assert train.run(args(data, out, "--init_from=resume", f"--max_iters={done + 2}")) == 0
    assert not (out / LOCK_NAME).exists() and not (tmp_path / "data" / LOCK_NAME).exists()  # left as found


HOLD = "import sys, time; from gptlib.locks import DirLock; DirLock(sys.argv[1], 'prepare_fineweb.py').acquire(); " \
       "print('locked', flush=True); time.sleep(120)"


def test_dataset_being_prepared_is_refused_to_train_and_prepare_until_its_writer_dies(data, tmp_path):
    """A process holding the dataset's writer lock, as a running prepare does: a second prepare (with other
    settings, which used to mix two datasets in one directory) and a train.py are refused, naming it; once it
    is killed, prepare takes the stale lock over."""
    ds = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ds)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        name = f"prepare_fineweb.py (pid {holder.pid})"
        prep = ["prepare_fineweb.py", f"--data_files={TEST_DATA / 'fineweb_sample.parquet'}", f"--out_dir={ds}",
                "--val_tokens=20000"]
        refused(command(*prep, "--shard_tokens=50000"), name)
        assert os.listdir(ds) == [LOCK_NAME]  # nothing written
        refused(command("train.py", *args(str(ds), tmp_path / "run", "--max_iters=2")), name)
        assert not (tmp_path / "run").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = command(*prep)
    assert result.returncode == 0, result.stderr[-2000:]
    m = shards.check_dataset(str(ds))
    assert m["progress"]["complete"] and not (ds / LOCK_NAME).exists()


def test_shard_truncated_under_a_running_train_keeps_the_checkpoint_and_refuses_the_resume(data, tmp_path):
    out = tmp_path / "run"
    proc = start_train(args(data, out, "--max_iters=100000", "--ckpt_interval=1", "--eval_interval=1000"))
    try:
        wait_for_iter(proc, out, 2)
        for p in shards.list_shards(data, "train"):  # cut every train shard back to its header
            os.truncate(p, shards.NPY_HEADER_BYTES)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "ended early while being read" in err.strip().splitlines()[-1], err[-2000:]
    checkpoint.load_checkpoint(str(out / "ckpt.pt"))  # intact
    result = command("train.py", *args(data, out, "--init_from=resume", "--max_iters=100"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "was truncated or damaged" in lines[0], result.stderr
