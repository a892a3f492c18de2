"""Resumability (kill -9), no clobbering, refusals and bad inputs of the prepare pipeline."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptlib import prepare
from gptlib import shards
from test_prepare import fw_cfg, run_fw, sample_texts, write_fineweb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})


def files_bytes(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.endswith(".npy")}


def test_kill_9_then_rerun_is_byte_identical(tmp_path, corpus):
    src = str(corpus / "fineweb_sample.parquet")
    args = [f"--data_files={src}", "--shard_tokens=50000", "--val_tokens=100000", "--batch_rows=16"]
    ref = tmp_path / "ref"
    # time the reference run: start-up (until it writes its manifest), then the work, so that kills land
    # inside the work however fast the machine is
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), *args, f"--out_dir={ref}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO})
    while not (ref / shards.MANIFEST).exists() and p.poll() is None:
        time.sleep(0.005)
    startup = time.perf_counter() - t0
    assert p.wait() == 0
    work = time.perf_counter() - t0 - startup
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), *args, f"--out_dir={out}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO})
        time.sleep(startup + rng.uniform(0.05, 0.35) * work)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    r = cli(*args, f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert kills >= 1
    assert files_bytes(out) == files_bytes(ref)
    assert shards.read_manifest(out)["shards"] == shards.read_manifest(ref)["shards"]


def test_no_clobbering_refusals_and_overwrite(tmp_path, corpus):
    f = write_fineweb(tmp_path / "a.parquet", sample_texts(corpus, 80))
    out = tmp_path / "out"
    assert cli(f"--data_files={f}", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=5000").returncode == 0
    before = files_bytes(out)
    again = cli(f"--data_files={f}", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=5000")
    assert again.returncode == 0 and "already complete" in again.stderr
    r = cli(f"--data_files={f}", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=9000")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "val_tokens=5000" in r.stderr and "--overwrite" in r.stderr
    assert files_bytes(out) == before
    # a different tokenizer in the manifest
    m = shards.read_manifest(out)
    shards.write_manifest(out, {**m, "tokenizer": "cl100k_base"})
    r = cli(f"--data_files={f}", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=5000")
    assert r.returncode == 1 and "tokenizer" in r.stderr and "Traceback" not in r.stderr
    assert files_bytes(out) == before
    # --overwrite replaces it
    r = cli(f"--data_files={f}", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=9000", "--overwrite")
    assert r.returncode == 0 and shards.read_manifest(out)["args"]["val_tokens"] == 9000
    # an --overwrite that cannot be made (val_tokens larger than the input) leaves the old dataset as it was
    before = files_bytes(out)
    r = cli(f"--data_files={f}", f"--out_dir={out}", "--val_tokens=10000000", "--overwrite")
    assert r.returncode == 1 and "would take all of it" in r.stderr and files_bytes(out) == before
    # shards with no manifest are not ours
    other = tmp_path / "other"
    other.mkdir()
    shards.write_shard(str(other / "train_000000.npy"), np.zeros(10, np.uint16))
    r = cli(f"--data_files={f}", f"--out_dir={other}")
    assert r.returncode == 1 and "no manifest.json" in r.stderr


def test_corrupt_truncated_and_missing_column(tmp_path, corpus):
    f = write_fineweb(tmp_path / "a.parquet", sample_texts(corpus, 80))
    data = open(f, "rb").read()
    bad = tmp_path / "trunc.parquet"
    bad.write_bytes(data[: len(data) // 2])
    r = cli(f"--data_files={bad}", f"--out_dir={tmp_path / 'o1'}")
    assert r.returncode == 1 and "not a readable parquet file" in r.stderr and "Traceback" not in r.stderr
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"content": ["x"]}), nocol)
    r = cli(f"--data_files={nocol}", f"--out_dir={tmp_path / 'o2'}")
    assert r.returncode == 1 and "no column 'text'" in r.stderr
    r = cli(f"--data_files={tmp_path / 'missing*.parquet'}", f"--out_dir={tmp_path / 'o3'}")
    assert r.returncode == 1 and "nothing matches" in r.stderr
    # corrupt page data inside a valid footer: detected while reading
    corrupt = bytearray(data)
    for i in range(100, len(data) // 2, 7):
        corrupt[i] ^= 0x5A
    (tmp_path / "corrupt.parquet").write_bytes(corrupt)
    r = cli(f"--data_files={tmp_path / 'corrupt.parquet'}", f"--out_dir={tmp_path / 'o4'}")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_null_empty_and_invalid_utf8_are_skipped_and_counted(tmp_path, corpus):
    good = sample_texts(corpus, 3)
    texts = [good[0], None, "", good[1], good[2]]
    f = write_fineweb(tmp_path / "a.parquet", texts)
    cfg = fw_cfg(tmp_path, f, val_tokens=0)
    m = run_fw(cfg)
    assert m["skipped"] == {"null_text": 1, "empty_text": 1} and m["docs"] == {"train": 3}
    # invalid UTF-8 in a string column, and in a binary column
    bad = pa.array([good[0].encode(), b"bad \xff\xfe bytes", good[1].encode()], pa.binary())
    for i, col in enumerate((bad.view(pa.string()), bad)):
        p = tmp_path / f"bad{i}.parquet"
        pq.write_table(pa.table({"text": col}), p)
        m = run_fw(fw_cfg(tmp_path, str(p), val_tokens=0, out_dir=str(tmp_path / f"b{i}")))
        assert m["skipped"] == {"invalid_utf8": 1} and m["docs"] == {"train": 2}


class FullDisk:
    """A file from the real open() whose writes fail with ENOSPC once `quota` bytes were written
    (shared by every file opened through it), as on a nearly full disk."""

    def __init__(self, f, quota):
        self._f, self._quota = f, quota

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if n > self._quota[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._quota[0] -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_leaves_no_partial_shard_and_resumes(tmp_path, corpus, monkeypatch):
    f = write_fineweb(tmp_path / "a.parquet", sample_texts(corpus, 150))
    ref = fw_cfg(tmp_path, f, out_dir=str(tmp_path / "ref"), batch_rows=16)
    run_fw(ref)
    cfg = fw_cfg(tmp_path, f, batch_rows=16)
    fulls = kept = 0
    for quota in (20_000, 170_000, 170_000, 170_000):  # bytes the disk takes in each attempt
        left = [quota]
        monkeypatch.setattr(shards, "open", lambda *a, **kw: FullDisk(open(*a, **kw), left), raising=False)
        try:
            run_fw(cfg)
        except shards.DataError as e:
            assert "disk full" in str(e)
            fulls += 1
        monkeypatch.delattr(shards, "open")
        names = os.listdir(cfg.out_dir)
        assert shards.MANIFEST + ".tmp" not in names
        m = shards.read_manifest(cfg.out_dir)
        for n in names:
            if n.endswith(".npy"):
                assert len(shards.read_shard(os.path.join(cfg.out_dir, n))) == m["shards"].get(n, len(np.load(os.path.join(cfg.out_dir, n))))
            elif n.endswith(".tmp"):  # only a shard being filled at the checkpoint, cut back to it
                split = n.split("_")[0]
                st = m["progress"]["writers"][split]
                assert n == shards.shard_name(split, st["index"]) + ".tmp" and st["fill"] > 0
                assert os.path.getsize(os.path.join(cfg.out_dir, n)) == shards.NPY_HEADER_BYTES + 2 * st["fill"]
                kept += 1
    assert fulls == 4 and kept >= 2
    run_fw(cfg)  # resumes
    assert files_bytes(cfg.out_dir) == files_bytes(ref.out_dir)


def test_cli_space_form_as_in_the_issue(tmp_path, corpus):
    """`--key value` with a quoted glob, a relative out_dir, then `--stats DIR`, exactly as users type them."""
    texts = sample_texts(corpus, 60)
    (tmp_path / "dir").mkdir()
    write_fineweb(tmp_path / "dir" / "a.parquet", texts[:30])
    write_fineweb(tmp_path / "dir" / "b.parquet", texts[30:])
    run = lambda *a: subprocess.run([sys.executable, os.path.join(REPO, "prepare_fineweb.py"), *a], cwd=tmp_path,
                                    capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    r = run("--data_files", "dir/*.parquet", "--out_dir", "data/fineweb", "--val_tokens", "5000")
    assert r.returncode == 0, r.stderr
    m = shards.read_manifest(tmp_path / "data" / "fineweb")
    assert [os.path.basename(s["name"]) for s in m["sources"]] == ["a.parquet", "b.parquet"]
    assert sum(m["docs"].values()) == 60 and m["args"]["val_tokens"] == 5000
    r = run("--stats", "data/fineweb")
    assert r.returncode == 0, r.stderr
    assert "document length" in r.stdout and (tmp_path / "data" / "fineweb" / prepare.HIST_PNG).exists()
    r = run("--out_dir")  # a missing value: a usage error, one line
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
