"""Bad inputs to every command, from one table. Each must end in ONE `error:` line on stderr, no
traceback, the documented exit code (2: a usage or settings mistake, 1: bad data or files), no code
run, and no existing file changed (nor any new one left behind). Run in-process, through the same
entry point as the scripts (errors.run_command); a few real CLI runs are at the end."""
import hashlib
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import bench
import eval as eval_script
import export
import plot
import prepare_fineweb
import prepare_github_code
import sample
import train
from conftest import REPO, shakespeare
from gptlib import checkpoint, shards
from advice import assert_advice_works
from gptlib.errors import run_command
from test_train import TINY, make_dataset

MARKER = "pwned_marker"  # a file that would appear if any input were run as code
COMMANDS = {"train": train.main, "sample": sample.main, "eval": eval_script.main, "export": export.main,
            "plot": plot.main, "bench": bench.main, "prepare_fineweb": prepare_fineweb.main,
            "prepare_github_code": prepare_github_code.main}


class Evil:
    """Unpickling this runs a shell command: what a malicious downloaded checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A dataset, a finished 1-iteration run in it (n_layer=2, block_size=32), and files to misuse."""
    root = tmp_path_factory.mktemp("bad")
    text = shakespeare()[:40_000]
    (root / "data").mkdir()
    data = make_dataset(root / "data", text, val_docs=10)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={root / 'run'}", "--max_iters=1", "--eval_interval=1", "--warmup_iters=1"]) == 0
    (root / "afile").write_text("a file, not a directory")
    (root / "latin1.py").write_bytes("batch_size = 4  # caf\xe9\n".encode("latin-1"))
    (root / "metrics").mkdir()
    (root / "metrics" / "metrics.jsonl").write_text('{"kind": "train", "iter": 1, "tokens": 10, "loss": 3.0}\n[1, 2, 3]\n'
                                                     '{"kind": "train", "iter": 2, "tokens": 20, "loss": 2.9}\n')
    (root / "badtokens").mkdir()
    (root / "badtokens" / "metrics.jsonl").write_text('{"kind": "train", "iter": 1, "tokens": "many", "loss": 3.0}\n')
    pq.write_table(pa.table({"text": pa.array([None, None, None], pa.string())}), root / "nulls.parquet")
    pq.write_table(pa.table({"text": ["A document. " * 40] * 30}), root / "docs.parquet")
    pq.write_table(pa.table({"text": ["A document. " * 40] * 30, "int_score": [1, 2, 3] * 10}), root / "edu.parquet")
    pq.write_table(pa.table({"code": ["print(1)\n" * 20] * 30, "repo_name": [f"o/r{i}" for i in range(30)],
                             "path": ["a.py"] * 30, "language": ["Python"] * 30, "license": ["mit"] * 30,
                             "size": [180] * 30}), root / "code.parquet")
    (root / "notcode").mkdir()
    (root / "notcode" / "notes.bin").write_bytes(b"\x00\x01")
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (root / "nofield.jsonl").write_text('{"body": "no text field"}\n')
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n\n".encode("latin-1") * 100)  # 100 documents
    (root / "table.csv").write_text("text\nhello\n")
    pq.write_table(pa.table({"text": pa.array(list(range(30)), pa.int64())}), root / "textint.parquet")
    pq.write_table(pa.table({"text": pa.array([["a", "b"]] * 30, pa.list_(pa.string()))}), root / "textlist.parquet")
    (root / "numtext.jsonl").write_text("".join(f'{{"text": {i}}}\n' for i in range(30)))
    (root / "blank.txt").write_text("\n   \n\t\n")
    (root / "hs.jsonl").write_text('{"ctx": "a", "endings": ["1", "2", "3", "4"], "label": 0}\n{"ctx": oops}\n')
    (root / "binmetrics").mkdir()
    (root / "binmetrics" / "metrics.jsonl").write_bytes(bytes(range(128, 256)) * 4)  # no newline: one "torn" line
    (root / "one.txt").write_text("One short document of plain text.\n")
    return types.SimpleNamespace(root=root, data=data, run=root / "run")


def config_file(tmp, body):
    (tmp / "cfg.py").write_text(body)
    return str(tmp / "cfg.py")


def copy_data(e, tmp, tokens, update_manifest=True):
    """The dataset with its train shards replaced by one shard of `tokens` (its manifest updated to match,
    count and checksum, unless update_manifest=False: then the shard was changed behind prepare's back)."""
    dst = tmp / "data"
    shutil.copytree(e.data, dst)
    m = shards.read_manifest(str(dst))
    for p in shards.list_shards(str(dst), "train"):
        os.remove(p)
        if update_manifest:
            del m["shards"][os.path.basename(p)], m["checksums"][os.path.basename(p)]
    if tokens.dtype == np.uint16:
        crc = shards.write_shard(str(dst / "train_000000.npy"), tokens)
    else:
        np.save(dst / "train_000000.npy", tokens)
        crc = None
    if update_manifest:
        m["shards"]["train_000000.npy"] = len(tokens)
        if crc:
            m["checksums"]["train_000000.npy"] = crc
        shards.write_manifest(str(dst), m)
    return str(dst)


def overwrite_train_shard(e, tmp):
    """Valid token ids written over the first train shard, same length: only its checksum can tell."""
    dst = tmp / "data"
    shutil.copytree(e.data, dst)
    path = shards.list_shards(str(dst), "train")[0]
    shards.write_shard(path, np.full(len(shards.read_shard(path)), 464, np.uint16))
    return str(dst)


def damaged_data(e, tmp, how):
    """A copy of the dataset with one fault: 'incomplete' (prepare did not finish), 'header' (bytes of a
    shard's .npy header overwritten), 'count' (manifest token count off by one), 'swapped' (the train shard
    replaced by other valid tokens of the same length, manifest updated to match: another dataset)."""
    dst = tmp / "data"
    shutil.copytree(e.data, dst)
    m = shards.read_manifest(str(dst))
    path = shards.list_shards(str(dst), "train")[0]
    name = os.path.basename(path)
    if how == "incomplete":
        m["progress"] = {"complete": False}
    elif how == "header":
        with open(path, "r+b") as f:
            f.seek(20)
            f.write(b"\x00'(){}\"'")
    elif how == "count":
        m["shards"][name] += 1
    elif how == "swapped":
        m["checksums"][name] = shards.write_shard(path, np.full(len(shards.read_shard(path)), 464, np.uint16))
    shards.write_manifest(str(dst), m)
    return str(dst)


def run_dir(e, tmp, ckpt_bytes=None, ckpt_obj=None):
    """An out_dir whose ckpt.pt is the good one, given bytes, or a torch.save of an object."""
    dst = tmp / "run"
    dst.mkdir()
    if ckpt_bytes is not None:
        (dst / "ckpt.pt").write_bytes(ckpt_bytes)
    elif ckpt_obj is not None:
        torch.save(ckpt_obj, dst / "ckpt.pt")
    else:
        shutil.copy(e.run / "ckpt.pt", dst / "ckpt.pt")
    return str(dst)


def nanogpt_style(e):
    ckpt = checkpoint.load_checkpoint(str(e.run / "ckpt.pt"))
    return {k: ckpt[k] for k in ("model", "model_args")} | {"iter_num": 1}  # no 'format' key


def evil(e):
    return {"format": checkpoint.CKPT_FORMAT, "x": Evil(MARKER)}


def tr(*extra, out=True):
    """train.py argv: the tiny model on the dataset, a fresh out_dir (which must not be created)."""
    return lambda e, tmp: TINY + [f"--data_dir={e.data}"] + ([f"--out_dir={tmp / 'out'}"] if out else []) + \
        [a(e, tmp) if callable(a) else a for a in extra]


def resume(*extra, **run_kw):
    return lambda e, tmp: TINY + [f"--data_dir={e.data}", "--init_from=resume", f"--out_dir={run_dir(e, tmp, **{k: v(e) if callable(v) else v for k, v in run_kw.items()})}", *extra]


def fw(*extra):
    return lambda e, tmp: [f"--data_files={e.root / 'docs.parquet'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=100",
                           *[a(e, tmp) if callable(a) else a for a in extra]]


# (id, command, argv(e, tmp), exit code, text the error line must contain)
CASES = [
    # ---- settings out of range (each was a ZeroDivisionError/ValueError traceback or silently accepted)
    ("batch_size=0", "train", tr("--batch_size=0"), 2, "batch_size must be >= 1, got 0"),
    ("block_size=0", "train", tr("--block_size=0"), 2, "block_size must be >= 1, got 0"),
    ("eval_interval=0", "train", tr("--eval_interval=0"), 2, "eval_interval must be >= 1"),
    ("ckpt_interval=0", "train", tr("--ckpt_interval=0"), 2, "ckpt_interval must be >= 1"),
    ("log_interval=0", "train", tr("--log_interval=0"), 2, "log_interval must be >= 1"),
    ("eval_tokens=-1", "train", tr("--eval_tokens=-1"), 2, "eval_tokens must be >= 0"),
    ("eval_iters of nanoGPT", "train", tr("--eval_iters=0"), 2, "eval_iters (nanoGPT's) must be a whole number >= 1, got 0"),
    ("batch_size=-4", "train", tr("--batch_size=-4"), 2, "batch_size must be >= 1, got -4"),
    ("seed=-1", "train", tr("--seed=-1"), 2, "seed must be >= 0"),
    ("cpu_threads=2**40", "train", tr("--cpu_threads=1099511627776"), 2, "cpu_threads must be >= 0 and <= 4096"),
    ("dropout=1.5", "train", tr("--dropout=1.5"), 2, "dropout must be >= 0 and < 1, got 1.5"),
    ("dtype=float64", "train", tr("--dtype=float64"), 2, "dtype must be one of 'auto', 'float32'"),
    ("n_embd % n_head", "train", tr("--n_embd=33"), 2, "n_embd=33 is not divisible by n_head=2"),
    ("max_iters=-1", "train", tr("--max_iters=-1"), 2, "max_iters must be >= 1"),
    ("keep_last_n=-1", "train", tr("--keep_last_n=-1"), 2, "keep_last_n must be >= 0"),
    ("learning_rate=1e999", "train", tr("--learning_rate=1e999"), 2, "learning_rate must be a finite number"),
    ("min_lr > learning_rate", "train", tr("--min_lr=1"), 2, "min_lr=1 is above learning_rate"),
    ("eval_batch_size > batch_size", "train", tr("--eval_batch_size=64"), 2, "eval_batch_size=64 is larger"),
    ("vocab_size below the data", "train", tr("--vocab_size=1000"), 2, "vocab_size=1000 is below the 50,257 token ids"),
    ("total_batch_size not a multiple", "train", tr("--total_batch_size=300"), 2, "is not a multiple of"),
    # ---- devices that are not there (this machine has neither CUDA nor MPS)
    ("train device=cuda", "train", tr("--device=cuda"), 2, "CUDA is not available here"),
    ("train device=mps", "train", tr("--device=mps"), 2, "MPS backend is not available"),
    ("train device=cuda:3", "train", tr("--device=cuda:3"), 2, "CUDA is not available here"),
    ("train device=tpu", "train", tr("--device=tpu"), 2, "device must be of the form auto, cpu, mps, cuda[:N]"),
    ("sample device=cuda", "sample", lambda e, tmp: [f"--out_dir={e.run}", "--device=cuda"], 2, "CUDA is not available"),
    ("eval device=mps", "eval", lambda e, tmp: [f"--out_dir={e.run}", "--device=mps"], 2, "MPS backend is not available"),
    ("bench device=cuda", "bench", lambda e, tmp: TINY + ["--device=cuda"], 2, "CUDA is not available"),
    # ---- config files
    ("config not UTF-8", "train", tr(lambda e, tmp: str(e.root / "latin1.py")), 2, "is not UTF-8 text"),
    ("config 1/0", "train", tr(lambda e, tmp: config_file(tmp, "batch_size = 1 / 0\n")), 2, "division by zero"),
    ("config 'a'*10**10", "train", tr(lambda e, tmp: config_file(tmp, "wandb_project = 'a' * 10**10\n")), 2, "too long"),
    ("config 10**400*1.0", "train", tr(lambda e, tmp: config_file(tmp, "learning_rate = 10**400 * 1.0\n")), 2, "too large"),
    ("config 9**9**9", "train", tr(lambda e, tmp: config_file(tmp, "max_iters = 9**9**9\n")), 2, "too large"),
    ("config code", "train", tr(lambda e, tmp: config_file(tmp, "import os\n")), 2, "only hold `name = value` lines"),
    ("config unknown key", "train", tr(lambda e, tmp: config_file(tmp, "learning_rat = 1e-3\n")), 2, "did you mean 'learning_rate'"),
    ("config missing", "train", tr(lambda e, tmp: str(tmp / "nope.py")), 2, "cannot read config file"),
    # ---- overrides
    ("unknown key", "train", tr("--learning_rat=1e-3"), 2, "did you mean 'learning_rate'"),
    ("wrong type", "train", tr("--n_layer=two"), 2, "n_layer must be int"),
    ("code in override", "train", tr(f"--batch_size=__import__('os').system('touch {MARKER}')"), 2, "batch_size must be int"),
    ("no value", "train", tr("--out_dir"), 2, "--out_dir needs a value"),
    # ---- destinations
    ("train out_dir is a file", "train", tr(lambda e, tmp: f"--out_dir={e.root / 'afile'}", out=False), 2, "is a file, not a directory"),
    ("train out_dir under a file", "train", tr(lambda e, tmp: f"--out_dir={e.root / 'afile' / 'x'}", out=False), 2, "is a file, not a directory"),
    ("prepare out_dir is a file", "prepare_fineweb", fw(lambda e, tmp: f"--out_dir={e.root / 'afile'}"), 2, "is a file, not a directory"),
    ("eval json_out under a file", "eval", lambda e, tmp: [f"--out_dir={e.run}", f"--json_out={e.root / 'afile' / 'r.json'}"], 2, "is a file, not a directory"),
    ("eval json_out is a folder", "eval", lambda e, tmp: [f"--out_dir={e.run}", f"--json_out={e.root}"], 2, "is a directory"),
    ("export to an existing file", "export", lambda e, tmp: [f"--out_dir={e.run}", f"--to={e.root / 'afile'}"], 2, "is a file, not a directory"),
    ("export to a path under a file", "export", lambda e, tmp: [f"--out_dir={e.run}", f"--to={e.root / 'afile' / 'hf'}"], 2, "is a file, not a directory"),
    ("export without --to", "export", lambda e, tmp: [f"--out_dir={e.run}"], 2, "--to is required"),
    ("plot out is a folder", "plot", lambda e, tmp: [str(e.run), f"--out={e.root}"], 2, "is a directory"),
    ("plot out without an image ending", "plot", lambda e, tmp: [str(e.run), f"--out={tmp / 'loss'}"], 2, "needs one of the endings"),
    ("plot no run", "plot", lambda e, tmp: [], 2, "give at least one run directory"),
    ("plot line of the wrong JSON type", "plot", lambda e, tmp: [str(e.root / "metrics"), f"--out={tmp / 'x.png'}"], 1, "line 2 is not a metrics record"),
    ("plot non-numeric tokens", "plot", lambda e, tmp: [str(e.root / "badtokens"), f"--out={tmp / 'x.png'}"], 1, "non-numeric tokens"),
    ("plot missing metrics", "plot", lambda e, tmp: [str(e.root / "data"), f"--out={tmp / 'x.png'}"], 1, "has no metrics.jsonl"),
    # ---- prepare settings and inputs
    ("prepare num_threads=-1", "prepare_fineweb", fw("--num_threads=-1"), 2, "num_threads must be >= 0"),
    ("prepare batch_rows=0", "prepare_fineweb", fw("--batch_rows=0"), 2, "batch_rows must be >= 1"),
    ("prepare min_int_score=6", "prepare_fineweb", fw("--min_int_score=6"), 2, "min_int_score must be >= 0 and <= 5"),
    ("prepare dataset", "prepare_fineweb", fw("--dataset=finewebb"), 2, "dataset must be one of 'fineweb', 'fineweb-edu'"),
    ("github val_repo_fraction=1", "prepare_github_code", fw("--val_repo_fraction=1"), 2, "val_repo_fraction must be >= 0 and < 1"),
    ("github unknown language", "prepare_github_code", fw("--languages=Pyhton"), 2, "unknown language 'Pyhton'"),
    ("prepare all-null parquet", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'nulls.parquet'}", f"--out_dir={tmp / 'ds'}"],
     1, "no document was kept (3 with null text)"),
    ("prepare min_int_score keeps nothing", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'edu.parquet'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=100", "--min_int_score=4"],
     1, "no document was kept (30 below the minimum int_score (--min_int_score=4)); change --min_int_score=4"),
    ("github --languages absent", "prepare_github_code", lambda e, tmp: [f"--data_files={e.root / 'code.parquet'}", f"--out_dir={tmp / 'ds'}", "--languages=C"],
     1, "no document was kept (30 in other languages (--languages=C)); change --languages=C"),
    ("github source_dir with no code", "prepare_github_code", lambda e, tmp: [f"--source_dir={e.root / 'notcode'}", f"--out_dir={tmp / 'ds'}"],
     1, "no document was kept (1 not code (no known language extension) (--source_dir))"),
    ("jsonl bad line", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'bad.jsonl'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=1"], 1, "line 2 is not valid JSON"),
    ("jsonl without text", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'nofield.jsonl'}", f"--out_dir={tmp / 'ds'}"], 1, "line 1 has no field 'text' (it has body)"),
    ("txt not utf-8", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'latin1.txt'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=1"], 1, "is valid UTF-8: it is in another encoding; give it with --encoding"),
    # ---- issue 18: refused prepares leave nothing; settings that contradict each other; advice that works
    ("prepare int64 text column", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'textint.parquet'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=10"], 1, "text column has type int64"),
    ("prepare list text column", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'textlist.parquet'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=10"], 1, "text column has type list<"),
    ("prepare jsonl numeric text", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'numtext.jsonl'}", f"--out_dir={tmp / 'ds'}", "--val_tokens=10"], 1, "text column has type int64"),
    ("prepare blank txt", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'blank.txt'}", f"--out_dir={tmp / 'ds'}"], 1, "holds no text (it is empty or only blank lines)"),
    ("prepare one-file txt_documents=file", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'one.txt'}", f"--out_dir={tmp / 'ds'}", "--txt_documents=file", "--val_tokens=5"], 1, "is the only document (--txt_documents=file), which cannot be split"),
    ("github two inputs", "prepare_github_code", lambda e, tmp: [f"--source_dir={e.root / 'notcode'}", f"--data_files={e.root / 'code.parquet'}", f"--out_dir={tmp / 'ds'}"], 2, "--source_dir and --data_files name two inputs"),
    ("github no held-out repository", "prepare_github_code", lambda e, tmp: [f"--data_files={e.root / 'code.parquet'}", f"--out_dir={tmp / 'ds'}", "--val_repo_fraction=0", "--val_tokens=2000"], 2, "val_repo_fraction=0 holds out no repository"),
    ("cosine warmup past the end", "train", tr("--warmup_iters=100", "--max_iters=3"), 2, "warmup_iters=100 is longer than the cosine schedule"),
    ("malformed list", "prepare_github_code", lambda e, tmp: [f"--source_dir={e.root / 'notcode'}", f"--out_dir={tmp / 'ds'}", "--skip_dirs=[1"], 2, "is not a valid list"),
    ("malformed val_sets", "train", tr("--val_sets=['val'"), 2, "is not a valid list"),
    ("val_sets of numbers", "train", tr("--val_sets=[1,2]"), 2, "val_sets must be a list of names"),
    ("primary_val not a val set", "train", tr("--primary_val=val-python"), 2, "primary_val='val-python' is not one of val_sets"),
    ("val_sets twice", "train", tr("--val_sets=['val','val']"), 2, "lists 'val' twice"),
    ("export into a non-empty folder", "export", lambda e, tmp: [f"--out_dir={e.run}", f"--to={e.root / 'data'}"], 2, "already holds files"),
    ("eval checksum advice", "eval", lambda e, tmp: [f"--out_dir={e.run}", f"--data_dir={overwrite_train_shard(e, tmp)}", "--split=train", "--max_tokens=64"], 1, "--verify_data=False to use it anyway"),
    ("eval corrupt checkpoint", "eval", lambda e, tmp: [f"--ckpt={run_dir(e, tmp, ckpt_bytes=os.urandom(4096))}/ckpt.pt", f"--data_dir={e.data}"], 1, "move it away and use another checkpoint"),
    ("sample corrupt checkpoint", "sample", lambda e, tmp: [f"--out_dir={run_dir(e, tmp, ckpt_bytes=os.urandom(4096))}"], 1, "move it away and use another checkpoint"),
    ("export corrupt checkpoint", "export", lambda e, tmp: [f"--out_dir={run_dir(e, tmp, ckpt_bytes=os.urandom(4096))}", f"--to={tmp / 'hf'}"], 1, "move it away and use another checkpoint"),
    ("hellaswag bad line 2", "eval", lambda e, tmp: [f"--out_dir={e.run}", "--hellaswag", f"--hellaswag_path={e.root / 'hs.jsonl'}"], 1, "hs.jsonl line 2 is not valid JSON"),
    ("plot binary metrics", "plot", lambda e, tmp: [str(e.root / "binmetrics"), f"--out={tmp / 'x.png'}"], 1, "holds no metrics records"),
    ("csv input", "prepare_fineweb", lambda e, tmp: [f"--data_files={e.root / 'table.csv'}", f"--out_dir={tmp / 'ds'}"], 1, "is not a .parquet, .jsonl or .txt file"),
    ("txt for github-code", "prepare_github_code", lambda e, tmp: [f"--data_files={e.root / 'latin1.txt'}", f"--out_dir={tmp / 'ds'}"], 1, "a .txt file holds only text"),
    ("prepare nothing matches", "prepare_fineweb", fw(lambda e, tmp: f"--data_files={tmp / 'missing*.parquet'}"), 1, "nothing matches"),
    # ---- data (the 6 of the earlier suite)
    ("missing data dir", "train", tr(lambda e, tmp: f"--data_dir={tmp / 'nope'}"), 1, "does not exist"),
    ("empty data dir", "train", tr(lambda e, tmp: f"--data_dir={(tmp / 'empty').mkdir() or tmp / 'empty'}"), 1, "manifest.json is missing"),
    ("manifest but no shards", "train", tr(lambda e, tmp: f"--data_dir={copy_data(e, tmp, np.zeros(0, np.uint16))}", "--val_sets=val"), 1, "fewer than one batch"),
    ("int32 shard", "train", tr(lambda e, tmp: f"--data_dir={copy_data(e, tmp, np.arange(5000, dtype=np.int32))}"), 1, "expected 1-D uint16"),
    ("ids >= vocab", "train", tr(lambda e, tmp: f"--data_dir={copy_data(e, tmp, np.full(5000, 60000, np.uint16))}"), 1, "token id 60000 >= vocab size 50257"),
    ("shard changed after prepare", "train", tr(lambda e, tmp: f"--data_dir={overwrite_train_shard(e, tmp)}"), 1, "does not match the checksum in manifest.json"),
    ("shard missing from manifest", "train", tr(lambda e, tmp: f"--data_dir={copy_data(e, tmp, np.zeros(5000, np.uint16)) and os.remove(tmp / 'data' / 'train_000000.npy') or tmp / 'data'}"), 1, "train_000000.npy is missing"),
    ("incomplete dataset", "train", tr(lambda e, tmp: f"--data_dir={damaged_data(e, tmp, 'incomplete')}"), 1, "is not completely prepared"),
    ("damaged shard header", "train", tr(lambda e, tmp: f"--data_dir={damaged_data(e, tmp, 'header')}"), 1, "has a damaged .npy header"),
    ("manifest count mismatch", "train", tr(lambda e, tmp: f"--data_dir={damaged_data(e, tmp, 'count')}"), 1, "but manifest.json says"),
    ("dataset swapped on resume", "train", lambda e, tmp: TINY + [f"--data_dir={damaged_data(e, tmp, 'swapped')}", "--init_from=resume", f"--out_dir={run_dir(e, tmp)}"], 1, "holds other 'train' data than the checkpoint"),
    # ---- checkpoints (the 7 of the earlier suite, and more)
    ("missing checkpoint", "train", lambda e, tmp: TINY + [f"--data_dir={e.data}", "--init_from=resume", f"--out_dir={tmp / 'nockpt'}"], 1, "no checkpoint at"),
    ("truncated checkpoint", "train", resume(ckpt_bytes=lambda e: (e.run / "ckpt.pt").read_bytes()[:5000]), 1, "is corrupt or not a checkpoint"),
    ("random bytes", "train", resume(ckpt_bytes=os.urandom(4096)), 1, "is corrupt or not a checkpoint"),
    ("nanoGPT checkpoint resumed in place", "train", resume(ckpt_obj=nanogpt_style), 1, "was written by nanoGPT, not by this train.py; continue it with --init_from="),
    ("foreign checkpoint", "train", resume(ckpt_obj={"weights": torch.zeros(2)}), 1, "is not a checkpoint of this toolkit nor of nanoGPT"),
    ("malicious pickle", "train", resume(ckpt_obj=evil), 1, "not a checkpoint this code can load safely"),
    ("block_size too large", "train", resume("--block_size=64"), 1, "cannot grow (RoPE models can): use block_size <= 32"),
    ("other model shape", "train", resume("--n_layer=3"), 1, "has n_layer=2 but the settings say 3"),
    ("scratch over a run", "train", lambda e, tmp: TINY + [f"--data_dir={e.data}", f"--out_dir={run_dir(e, tmp)}"], 2, "already holds a run"),
    ("sample missing out_dir", "sample", lambda e, tmp: [f"--out_dir={tmp / 'nope'}"], 1, "does not exist"),
    ("sample bad temperature", "sample", lambda e, tmp: [f"--out_dir={e.run}", "--temperature=-1"], 2, "temperature must be >= 0"),
    ("eval unknown init_from", "eval", lambda e, tmp: ["--init_from=gpt5"], 2, "init_from must be 'resume'"),
    ("export missing out_dir", "export", lambda e, tmp: [f"--out_dir={tmp / 'nope'}", f"--to={tmp / 'hf'}"], 1, "does not exist"),
]


CONFIGS = {"train": train.TrainConfig, "sample": sample.SampleConfig, "eval": eval_script.EvalConfig,
           "export": export.ExportConfig, "plot": plot.PlotConfig, "bench": bench.BenchConfig,
           "prepare_fineweb": prepare_fineweb.FinewebConfig, "prepare_github_code": prepare_github_code.GithubCodeConfig}


def assert_advice_is_accepted(command, line):
    """Every --name=value an error line suggests (issue 18: eval.py used to advise --verify_data=False, which it
    rejects) must be a setting of the command that printed it, with a value it takes. Flags that follow another
    script's name ('run bench.py --find_batch_size') belong to that script and are skipped."""
    import dataclasses
    import re
    fields = {f.name: f for f in dataclasses.fields(CONFIGS[command])}
    fields["help"] = dataclasses.field()  # every command takes --help
    for m in re.finditer(r"(\w+\.py\s+)?--([a-z_][a-z0-9_]*)(=[^\s;,)]+)?", line):
        if m.group(1):
            continue
        name, value = m.group(2), (m.group(3) or "=")[1:].strip("'\"")
        assert name in fields, f"{command}: the error suggests --{name}, which {command} does not accept: {line}"
        choices = fields[name].metadata.get("choices")
        if choices and value and not any(str(c) == value for c in choices):
            raise AssertionError(f"{command}: the error suggests --{name}={value}, not one of {choices}: {line}")


def snapshot(root):
    """Every file below root with its size, mtime and content hash, and every directory."""
    out = {}
    for d, dirs, files in os.walk(root):
        out[d] = "dir"
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns, hashlib.md5(open(p, "rb").read()).hexdigest())
    return out


@pytest.mark.parametrize("name, command, argv, code, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(env, tmp_path, capsys, monkeypatch, name, command, argv, code, expected):
    monkeypatch.chdir(tmp_path)
    args = argv(env, tmp_path)
    before = snapshot(env.root), snapshot(tmp_path)
    rc = run_command(COMMANDS[command], args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, f"{name}: exit {rc}, stderr {err[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err[-1500:]}"
    assert expected in lines[0], f"{name}: {lines[0]}"
    assert_advice_is_accepted(command, lines[0])
    assert "Traceback" not in out + err
    assert not (tmp_path / MARKER).exists(), f"{name}: code ran"
    assert (snapshot(env.root), snapshot(tmp_path)) == before, f"{name}: files were changed or left behind"
    assert_advice_works(COMMANDS[command], command, args, lines[0])  # applied as written, it gets past (issue 28)


def test_divergence_before_any_checkpoint_says_so(env, tmp_path, capsys, monkeypatch):
    """With no checkpoint written yet, the divergence message must not point at one."""
    forward = train.GPT.forward
    monkeypatch.setattr(train.GPT, "forward", lambda self, idx, targets=None: (
        lambda out: (out[0], out[1] * float("nan")) if self.training and targets is not None else out)(forward(self, idx, targets)))
    rc = train.run(TINY + [f"--data_dir={env.data}", f"--out_dir={tmp_path / 'out'}", "--max_iters=20",
                           "--eval_interval=100", "--max_bad_steps=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1
    assert "no checkpoint was written yet" in err[0] and "ckpt.pt" not in err[0]


def test_malicious_checkpoint_is_refused_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.CKPT_FORMAT, "version": checkpoint.CKPT_VERSION, "model": Evil(MARKER)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint this code can load safely"):
        checkpoint.load_checkpoint(str(path))
    assert not (tmp_path / MARKER).exists()
    torch.load(path, weights_only=False)  # proof the file is live: unrestricted unpickling does run it
    assert (tmp_path / MARKER).exists()


def test_corrupt_checkpoints_always_give_checkpoint_error(env, tmp_path):
    """Random bytes and every kind of cut-off file fail as CheckpointError, never another exception
    (torch.load raises IndexError, KeyError, ... on some random inputs)."""
    rng = np.random.default_rng(0)
    data = (env.run / "ckpt.pt").read_bytes()
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 8192, 200)]
    blobs += [data[:int(n)] for n in rng.integers(0, len(data), 30)]
    path = tmp_path / "ckpt.pt"
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(checkpoint.CheckpointError, match="corrupt or not a checkpoint"):
            checkpoint.load_checkpoint(str(path))


def test_json_out_into_a_missing_folder_is_created(env, tmp_path):
    assert run_command(eval_script.main, [f"--out_dir={env.run}", "--max_tokens=64", "--batch_size=2",
                                          f"--json_out={tmp_path / 'results' / 'r.json'}", "--device=cpu"]) == 0
    assert (tmp_path / "results" / "r.json").exists()


# ----------------------------------------------------------------------------- real command lines

def cli(script, *args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("script, args, code, expected", [
    ("train.py", ["CFG"], 2, "too large"),  # 9**9**9 in a config file: refused at once, never computed
    ("train.py", ["--batch_size=0"], 2, "batch_size must be >= 1"),
    ("prepare_github_code.py", ["--val_repo_fraction=1"], 2, "val_repo_fraction must be"),
])
def test_cli_one_line_and_exit_code(tmp_path, script, args, code, expected):
    (tmp_path / "cfg.py").write_text("max_iters = 9**9**9\n")
    r = cli(script, *[str(tmp_path / "cfg.py") if a == "CFG" else a for a in args], cwd=tmp_path, timeout=60)
    assert r.returncode == code and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
