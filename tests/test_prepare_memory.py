"""Peak RSS of the whole pipeline, measured in a subprocess, stays flat as the parquet file grows."""
import sysconfig

import pytest

from bench_prepare import build_code_parquet, run_pipeline

MB = 1 << 20


def peak(tmp_path, text_mb, shard_tokens=1_000_000):
    path = str(tmp_path / f"code{text_mb}.parquet")
    build_code_parquet(path, text_mb * MB, sysconfig.get_paths()["purelib"], 4 * MB)  # row groups smaller than both files, so only the file size differs
    return run_pipeline(path, str(tmp_path / f"out{text_mb}"), 1024, 2, shard_tokens)[1]


def test_peak_rss_flat_with_file_size(tmp_path):
    small, large = peak(tmp_path, 8), peak(tmp_path, 32)
    assert large - small < 60 * MB, (small / MB, large / MB)


@pytest.mark.slow
def test_peak_rss_400mb_file(tmp_path):
    rss = peak(tmp_path, 400, shard_tokens=10_000_000)
    assert rss <= 400 * MB, rss / MB
