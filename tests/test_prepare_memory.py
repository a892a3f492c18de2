"""Peak RSS of the whole pipeline, measured in a subprocess at the default 100M-token shard size,
stays flat as the parquet file grows: no shard is buffered in memory (shards.ShardWriter streams)."""
import os
import sysconfig

import numpy as np
import pytest

from gptlib import shards
from benchmarks.bench_prepare import build_code_parquet, run_pipeline

MB = 1 << 20


def py_bytes(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names if n.endswith(".py"))


def peak(tmp_path, name, text_bytes, src_dir, row_group_bytes):
    path = str(tmp_path / f"{name}.parquet")
    build_code_parquet(path, text_bytes, src_dir, row_group_bytes)
    out = str(tmp_path / f"out_{name}")
    rss = run_pipeline(path, out, num_threads=2)[1]  # default shard_tokens
    os.remove(path)
    return rss, shards.read_manifest(out)["tokens"]["train"]


def test_peak_rss_flat_with_file_size(tmp_path):
    # numpy's own source twice, then 8 times over (new repo names each time): the same documents in the same
    # order, so only the amount of data differs. A 200 MB in-memory shard buffer would grow by 2 bytes a token.
    # (Twice, not once: the smaller run must last long enough to reach its steady peak.)
    src = os.path.dirname(np.__file__)
    once = py_bytes(src)
    small, n_small = peak(tmp_path, "x3", 3 * once, src, 4 * MB)
    large, n_large = peak(tmp_path, "x12", 12 * once, src, 4 * MB)
    assert 3.5 * n_small < n_large < shards.DEFAULT_SHARD_TOKENS  # all in the first, unfinished shard
    grown_buffer = 2 * (n_large - n_small)  # what a buffered shard would have added
    assert grown_buffer > 20 * MB
    assert large - small < grown_buffer / 2, (small / MB, large / MB, grown_buffer / MB)


@pytest.mark.slow
def test_peak_rss_400mb_of_text(tmp_path):
    """The issue's target: a single parquet file of 400 MB of real code (site-packages, repeated if
    needed) in 64 MB row groups, default settings: peak RSS <= 400 MB."""
    rss, ntok = peak(tmp_path, "x400", 400 * MB, sysconfig.get_paths()["purelib"], 64 * MB)
    print(f"peak RSS {rss / MB:.0f} MB for {ntok:,} train tokens")
    assert rss <= 400 * MB, rss / MB
