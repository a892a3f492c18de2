"""The download path runs huggingface_hub's real code offline, against a cache laid out as the hub lays it out."""
import hashlib
import os
import subprocess
import sys


from gptlib import shards
from test_prepare import code_rows, sample_texts, write_code, write_fineweb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_cache(cache, repo_id, files, commit=COMMIT, ref="main"):
    """files: {path in repo: local file}; blobs/ + snapshots/<commit>/ symlinks + refs/<ref>, as the hub cache."""
    root = cache / f"datasets--{repo_id.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    for name, src in files.items():
        data = open(src, "rb").read()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)


def run(script, cache, *args):
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True, env=env)


def test_fineweb_edu_and_github_code_from_offline_hub_cache(tmp_path, corpus):
    cache = tmp_path / "hub"
    texts = sample_texts(corpus, 90)
    parts = [write_fineweb(tmp_path / f"{i}.parquet", texts[i * 30:(i + 1) * 30], edu=True) for i in range(3)]
    add_to_cache(cache, "HuggingFaceFW/fineweb-edu", {f"sample/10BT/{i:03d}_00000.parquet": p for i, p in enumerate(parts)})
    out = tmp_path / "edu"
    r = run("prepare_fineweb.py", cache, "--dataset=fineweb-edu", "--subset=sample-10BT", "--num_files=2",
            f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=1000")
    assert r.returncode == 0, r.stderr
    m = shards.read_manifest(out)
    assert m["hub"]["commit"] == COMMIT and m["hub"]["repo"] == "HuggingFaceFW/fineweb-edu"
    assert [s["name"] for s in m["sources"]] == [
        f"hf://datasets/HuggingFaceFW/fineweb-edu@{COMMIT}/sample/10BT/{i:03d}_00000.parquet" for i in range(2)]
    assert sum(m["docs"].values()) == 60
    r = run("prepare_fineweb.py", cache, "--dataset=fineweb-edu", "--num_files=5", f"--out_dir={tmp_path / 'x'}")
    assert r.returncode == 1 and "--num_files asks for 5" in r.stderr
    r = run("prepare_fineweb.py", cache, "--dataset=fineweb", f"--out_dir={tmp_path / 'y'}")
    assert r.returncode == 1 and r.stderr.startswith("error: cannot list HuggingFaceFW/fineweb")

    code = write_code(tmp_path / "code.parquet", code_rows(120))
    add_to_cache(cache, "codeparrot/github-code-clean", {"data/train-00000-of-00880.parquet": code}, ref="v1.0")
    out = tmp_path / "code"
    r = run("prepare_github_code.py", cache, "--dataset=codeparrot/github-code-clean", "--revision=v1.0",
            "--num_files=1", f"--out_dir={out}", "--shard_tokens=50000", "--val_repo_fraction=0.3")
    assert r.returncode == 0, r.stderr
    m = shards.read_manifest(out)
    assert m["hub"] == {"repo": "codeparrot/github-code-clean", "folder": "data", "revision": "v1.0", "commit": COMMIT}
    assert "val-python" in shards.list_splits(out)


def test_rerun_stays_on_the_commit_the_dataset_started_from(tmp_path, corpus):
    """The branch moves on between runs (the hub's 'main' is updated): a re-run of the same command, e.g. to
    resume after a crash, keeps fetching the commit recorded in manifest.json, never a mix of two commits."""
    cache = tmp_path / "hub"
    texts = sample_texts(corpus, 60)
    old = [write_fineweb(tmp_path / f"old{i}.parquet", texts[i * 20:(i + 1) * 20]) for i in range(2)]
    add_to_cache(cache, "HuggingFaceFW/fineweb", {f"sample/10BT/{i:03d}_00000.parquet": p for i, p in enumerate(old)})
    out = tmp_path / "fw"
    args = ["--num_files=2", f"--out_dir={out}", "--shard_tokens=50000", "--val_tokens=1000"]
    assert run("prepare_fineweb.py", cache, *args).returncode == 0
    before = {p: open(p, "rb").read() for p in shards.list_shards(str(out), "train")}
    new_commit = "f" * 40
    new = write_fineweb(tmp_path / "new.parquet", texts[40:])
    add_to_cache(cache, "HuggingFaceFW/fineweb", {f"sample/10BT/{i:03d}_00000.parquet": new for i in range(2)},
                 commit=new_commit)  # refs/main now points at new_commit
    r = run("prepare_fineweb.py", cache, *args)
    assert r.returncode == 0, r.stderr
    m = shards.read_manifest(str(out))
    assert m["hub"]["commit"] == COMMIT and all(f"@{COMMIT}/" in s["name"] for s in m["sources"])
    assert {p: open(p, "rb").read() for p in shards.list_shards(str(out), "train")} == before
    fresh = tmp_path / "fresh"  # a new dataset follows the branch to its new commit
    assert run("prepare_fineweb.py", cache, "--num_files=2", f"--out_dir={fresh}", "--val_tokens=1000").returncode == 0
    assert shards.read_manifest(str(fresh))["hub"]["commit"] == new_commit
