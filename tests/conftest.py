import functools
import gzip
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"  # small slices of public datasets, in the repository (tests/data/README.md)
sys.path.insert(0, str(REPO))
# Optional extras of a development checkout, never required: ../shared's BPE cache (used only when
# TIKTOKEN_CACHE_DIR is unset) and nanoGPT's own scripts for the tests that run them (skipped without them)
_SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (_SHARED / "tiktoken_cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED / "tiktoken_cache")
NANOGPT_DIR = pathlib.Path(os.environ.get("NANOGPT_DIR", _SHARED / "peers" / "nanoGPT"))


def pytest_configure(config):
    """Most tests tokenize: without the GPT-2 BPE files (no network, no cache) stop here in one line."""
    from gptlib.errors import UserError
    from gptlib.shards import gpt2_encoding
    try:
        gpt2_encoding()
    except UserError as e:
        raise pytest.UsageError(str(e)) from None


@functools.lru_cache(maxsize=1)
def shakespeare():
    """The first 600K characters of Tiny Shakespeare (tests/data)."""
    with gzip.open(TEST_DATA / "tinyshakespeare.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()


@pytest.fixture
def corpus():
    """The folder of the test data files (tests/data)."""
    return TEST_DATA
