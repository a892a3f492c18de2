"""Throughput and memory of the prepare pipeline, on real code.

    python -m benchmarks.bench_prepare                      # 400 MB of text from site-packages .py files
    python -m benchmarks.bench_prepare --text_mb=100 --num_threads=2

Builds one github-code-schema parquet file of `text_mb` MB of source text (site-packages
.py files, repeated if needed) in row groups of about `row_group_mb` MB, then on those same
documents measures (1) tiktoken's raw encode_ordinary_batch throughput, documents already
in memory, and (2) the whole pipeline (read, tokenize, write shards) in a subprocess, with
its peak RSS. Prints the figures and the machine they ran on.
"""
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from gptlib import shards
from gptlib.errors import DataError, run_command
from gptlib.prepare import PrepareConfig
from gptlib.settings import load_config, setting

MB = 1 << 20
RAW_BATCH_ROWS = 1024  # documents per encode_ordinary_batch call when timing raw tiktoken (amortizes its thread pool)
GITHUB_CODE_SCHEMA = [("code", "string"), ("repo_name", "string"), ("path", "string"),
                      ("language", "string"), ("license", "string"), ("size", "int64")]


@dataclass
class BenchConfig:
    text_mb: int = setting(400, ge=1)  # MB of source text in the parquet file
    row_group_mb: int = setting(64, ge=1)  # MB of text per parquet row group (real hub files hold tens to hundreds of MB)
    src_dir: str = setting("")  # where to read .py files; '': site-packages
    num_threads: int = setting(0, ge=0)  # tokenizer threads for both measurements; 0: all CPU cores
    batch_rows: int = setting(PrepareConfig.batch_rows, ge=1)  # documents per record batch, as prepare.py's setting
    work_dir: str = setting("", path="dir")  # where the parquet file and shards go; '': a temporary directory


def build_code_parquet(path, text_bytes, src_dir, row_group_bytes):
    """Write a github-code parquet file of about text_bytes of real .py files from src_dir
    (sorted, repeated under new repo names if the directory holds less). Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = []
    for d, dirs, names in os.walk(src_dir):
        dirs.sort()
        files.extend(os.path.join(d, n) for n in sorted(names) if n.endswith(".py"))
    if not files:
        raise DataError(f"no .py files under {src_dir}; pass --src_dir=DIR of Python source")
    schema = pa.schema([(name, getattr(pa, t)()) for name, t in GITHUB_CODE_SCHEMA])
    total = rows_total = 0
    rows = {name: [] for name, _ in GITHUB_CODE_SCHEMA}
    group = 0
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        for rep in range(1 << 30):
            for f in files:
                try:
                    with open(f, encoding="utf-8") as fh:
                        code = fh.read()
                except (OSError, UnicodeDecodeError):
                    continue
                rel = os.path.relpath(f, src_dir)
                rows["code"].append(code)
                rows["repo_name"].append(f"copy{rep}/{rel.split(os.sep, 1)[0]}")
                rows["path"].append(rel)
                rows["language"].append("Python")
                rows["license"].append("mit")
                rows["size"].append(len(code))
                group += len(code)
                total += len(code)
                if group >= row_group_bytes or total >= text_bytes:
                    w.write_table(pa.table(rows, schema=schema), row_group_size=len(rows["code"]))
                    rows_total += len(rows["code"])
                    rows = {name: [] for name, _ in GITHUB_CODE_SCHEMA}
                    group = 0
                if total >= text_bytes:
                    return rows_total
    return rows_total


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import tiktoken
    import pyarrow
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, tiktoken {tiktoken.__version__}, "
            f"pyarrow {pyarrow.__version__}")


def raw_encode(path, num_threads, batch_rows=RAW_BATCH_ROWS):
    """Tokens/s of encode_ordinary_batch alone, on the file's documents read beforehand batch by batch."""
    import pyarrow.parquet as pq
    enc = shards.gpt2_encoding()
    ntok, secs = 0, 0.0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["code"]):
        texts = batch.column(0).to_pylist()
        t0 = time.perf_counter()
        toks = enc.encode_ordinary_batch(texts, num_threads=num_threads)
        secs += time.perf_counter() - t0
        ntok += sum(map(len, toks))
    return ntok, secs


def run_pipeline(path, out_dir, batch_rows=PrepareConfig.batch_rows, num_threads=0, shard_tokens=shards.DEFAULT_SHARD_TOKENS):
    """Run prepare_github_code.py in a child process; returns (wall seconds, peak RSS bytes, stdout).
    Its stdout ends with prepare's own 'done in X s' (imports and process start excluded)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would count this (parent) process's memory
    code = ("import os, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "finally:\n    print('peak_rss_kb', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")
    cmd = [sys.executable, "-c", code, os.path.join(here, "prepare_github_code.py"), f"--data_files={path}",
           f"--out_dir={out_dir}", f"--batch_rows={batch_rows}", f"--num_threads={num_threads}", "--overwrite", f"--shard_tokens={shard_tokens}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise DataError(f"the pipeline failed: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
    rss = int(p.stdout.split("peak_rss_kb")[-1].split()[0]) * 1024  # ru_maxrss is in KB on Linux
    return wall, rss, p.stdout


def main(argv):
    cfg = load_config(BenchConfig, argv)
    import sysconfig
    src = cfg.src_dir or sysconfig.get_paths()["purelib"]
    threads = cfg.num_threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=cfg.work_dir or None) as tmp:
        path = os.path.join(tmp, "code.parquet")
        t0 = time.perf_counter()
        rows = build_code_parquet(path, cfg.text_mb * MB, src, cfg.row_group_mb * MB)
        print(f"built {path}: {rows:,} files, {cfg.text_mb} MB of text, {os.path.getsize(path) / MB:.0f} MB on disk, "
              f"row groups of ~{cfg.row_group_mb} MB ({time.perf_counter() - t0:.0f}s)")
        ntok, secs = raw_encode(path, threads)
        raw = ntok / secs
        print(f"raw tiktoken encode_ordinary_batch ({threads} threads): {ntok:,} tokens in {secs:.1f}s = {raw / 1e6:.2f}M tok/s")
        wall, rss, out = run_pipeline(path, os.path.join(tmp, "shards"), cfg.batch_rows, threads)
        total = ntok + rows  # the pipeline also writes one EOT per document
        inner = float(re.search(r"done in ([0-9.]+)s", out).group(1))
        for what, secs in (("process start included", wall), ("in-process, imports excluded", inner)):
            rate = total / secs
            print(f"pipeline (read + tokenize + write, {what}): {total:,} tokens in {secs:.1f}s = "
                  f"{rate / 1e6:.2f}M tok/s = {100 * rate / raw:.0f}% of raw")
        print(f"pipeline peak RSS {rss / MB:.0f} MB (default shard_tokens={shards.DEFAULT_SHARD_TOKENS:,})")
        print(f"machine: {machine()}")


if __name__ == "__main__":
    sys.exit(run_command(main))
