"""bench.py on CPU with tiny models: --json fields and their arithmetic, the batch-size search (with a
simulated out-of-memory), real shards via --use_data, and one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
from gptlib import checkpoint, monitor
from gptlib import shards
from gptlib.settings import load_config
from conftest import shakespeare

REPO = bench.__file__.rsplit("/", 1)[0]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--vocab_size=512", "--compile=False",
        "--device=cpu", "--dtype=float32", "--iters=3", "--warmup_iters_bench=1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~10x faster on one thread than on two when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "bench.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_json_line_fields_are_consistent():
    r = run_cli(*TINY, "--batch_size=4", "--total_batch_size=512", "--peak_tflops=0.5", "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    for key in ("device", "gpu_name", "torch", "dtype", "compile", "batch_size", "block_size", "tokens_per_sec",
                "ms_per_iter", "mfu", "peak_tflops", "peak_mem_gb", "n_params", "cpu"):
        assert key in res
    assert res["device"] == "cpu" and res["gpu_name"] is None and res["torch"] == torch.__version__
    assert res["batch_size"] == 4 and res["block_size"] == 64 and res["grad_accum"] == 2  # 512 / (4*64)
    assert res["micro_step_ms"] > 0 and res["optimizer_step_ms"] > 0 and res["tokens_per_sec"] > 0
    # a step is grad_accum micro-steps plus one optimizer step, and tok/s follows from it
    assert res["ms_per_iter"] == pytest.approx(2 * res["micro_step_ms"] + res["optimizer_step_ms"])
    assert res["tokens_per_sec"] == pytest.approx(512 / (res["ms_per_iter"] / 1000))
    # the same FLOPs count as the monitor, and MFU against the overridden peak
    assert res["flops_per_token"] == monitor.flops_per_token(res["n_params"] - 512 * 32 - 64 * 32, 2, 32, 64, 512)
    assert res["peak_tflops"] == 0.5
    assert res["mfu"] == pytest.approx(res["tokens_per_sec"] * res["flops_per_token"] / 0.5e12)
    assert 0 < res["peak_mem_gb"] < 24  # process RSS on CPU


def test_find_batch_size_on_cpu_respects_cap_and_suggests_accumulation():
    # cap 4; 384 tokens/step = 6 sequences of 64: the largest micro-batch <= 4 dividing 6 is 3, so 2 micro-steps
    cfg = load_config(bench.BenchConfig, TINY + ["--find_batch_size", "--max_batch_size=4", "--total_batch_size=384"])
    res = bench.run_bench(cfg)
    assert res["max_batch_size_fits"] == 4 and res["cap_reached"]
    assert res["batch_size"] == 3 and res["grad_accum"] == 2
    assert res["tokens_per_sec"] > 0 and res["mfu"] is None and res["peak_tflops"] is None  # no MFU on CPU
    table = bench.format_table(res)
    assert "--batch_size=3 with 2 gradient accumulation" in table and res["cpu"] in table and "n/a" in table


def test_batch_search_stops_at_out_of_memory_and_frees_between_tries():
    """A real Bench whose micro-step runs out of memory above B=5 (what a GPU does) -> 5 is found."""
    cfg = load_config(bench.BenchConfig, TINY)
    b = bench.Bench(cfg)
    real_train_step, tried = b.train_step, []

    def train_step(B, micro_steps):
        tried.append(B)
        if B > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train_step(B, micro_steps)

    b.train_step = train_step
    assert bench.find_max_batch(b, cap=64)[0] == 5
    assert tried == [1, 2, 4, 8, 6, 5]  # doubling, then binary search between 4 and 8
    assert all(p.grad is None for p in b.raw_model.parameters())  # nothing left allocated after a failed try


def test_batch_search_counts_the_eval_and_hellaswag_batches():
    """Training fits at every size but the eval batch runs out of memory above B=3 (the real user's failure):
    the answer is 3; and with hellaswag_interval the HellaSwag batch is part of every try."""
    cfg = load_config(bench.BenchConfig, TINY + ["--hellaswag_interval=100"])
    b = bench.Bench(cfg)
    real_eval, scored = b.eval_step, []

    def eval_step(B):
        if B > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        real_eval(B)
    b.eval_step = eval_step
    real_rows = b.scored_rows_step
    b.scored_rows_step = lambda: scored.append(1) or real_rows()
    assert bench.find_max_batch(b, cap=16)[0] == 3 and scored
    res = bench.run_bench(load_config(bench.BenchConfig, TINY + ["--hellaswag_interval=100", "--find_batch_size",
                                                                 "--max_batch_size=2", "--iters=1"]))
    assert res["fit_checks"] == "train step, eval, HellaSwag" and res["memory_margin"] is None  # no margin on CPU


@pytest.mark.parametrize("compiled", [False, True])
def test_batch_search_arithmetic_large_cap(compiled):
    """Compiled, the search starts at 2 (the first graph then has a dynamic batch dimension) and tries 1 only
    when 2 does not fit."""
    class Fake:
        def __init__(self, limit):
            self.limit, self.calls, self.compiled = limit, 0, compiled
            self.cfg = load_config(bench.BenchConfig, [])

        def fits(self, B):
            self.calls += 1
            return B <= self.limit

    for limit, cap, want in [(37, 1024, 37), (1024, 1024, 1024), (1, 8, 1), (300, 100, 100), (64, 1024, 64)]:
        f = Fake(limit)
        best, tried = bench.find_max_batch(f, cap)
        assert best == want and tried == [(B, B <= limit) for B, _ in tried] and f.calls == len(tried)
        assert tried[0][0] == (2 if compiled else 1) and f.calls <= 2 * 11  # O(log cap) tries
        assert not f.dynamic_batch  # only during the search
    assert [B for B, _ in bench.find_max_batch(Fake(1), 8)[1]] == ([2, 1] if compiled else [1, 2])
    with pytest.raises(bench.OutOfMemory, match="batch_size=1"):
        bench.find_max_batch(Fake(0), 8)


@pytest.mark.slow  # 25-30 s of CPU compile: in `-m slow` (the default suite's time, issue 28)
def test_compiled_batch_search_compiles_the_model_once():
    """Every candidate runs in the first candidate's graph of the model (before: size 1, then a dynamic recompile
    at size 2). One small recompile is left: the loss's fused softmax, after AOTAutograd's first-call check of
    custom ops (torch 2.13) ran it under a dispatch mode."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from model import GPT
    b = bench.Bench(load_config(bench.BenchConfig, [t for t in TINY if t != "--compile=False"]))
    assert b.compiled and bench.find_max_batch(b, cap=8) == (8, [(2, True), (4, True), (8, True)])
    assert len(_debug_get_cache_entry_list(GPT.forward.__code__)) == 1


def test_non_oom_errors_are_not_swallowed_by_the_search():
    b = bench.Bench(load_config(bench.BenchConfig, TINY))

    def broken(B, micro_steps):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    b.train_step = broken
    with pytest.raises(RuntimeError, match="shapes"):
        b.fits(2)


def test_use_data_reads_real_shards(tmp_path, corpus):
    import tiktoken
    text = shakespeare()[:20_000]
    toks = [shards.EOT] + tiktoken.get_encoding("gpt2").encode_ordinary(text)
    shards.write_shard(str(tmp_path / shards.shard_name("train", 0)), np.array(toks, dtype=shards.DTYPE))
    args = TINY + ["--vocab_size=50304", "--batch_size=2", "--block_size=32", "--total_batch_size=64",
                   "--use_data", f"--data_dir={tmp_path}"]
    res = bench.run_bench(load_config(bench.BenchConfig, args))
    assert res["data"] == f"shards in {tmp_path}" and res["tokens_per_sec"] > 0
    with pytest.raises(shards.DataError, match="does not exist"):
        bench.run_bench(load_config(bench.BenchConfig, args[:-1] + [f"--data_dir={tmp_path / 'nope'}"]))


def test_bench_times_the_step_train_py_runs(tmp_path):
    """bench.py's step is gptlib/step.py's, the one train.py runs (issue 34): on the same shards, settings and
    seed, one step gives train.py's loss and gradient norm, and the same weights after the update."""
    import train
    from test_train import make_dataset
    data = make_dataset(tmp_path, shakespeare()[:30_000], val_docs=5)
    args = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--total_batch_size=128",
            "--compile=False", "--device=cpu", "--dtype=float32", "--warmup_iters=0", "--optimizer=muon",
            f"--data_dir={data}"]
    assert train.run(args + [f"--out_dir={tmp_path / 'run'}", "--max_iters=1", "--eval_tokens=64"]) == 0
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    step = next(r for r in logged if r["kind"] == "train")
    b = bench.Bench(load_config(bench.BenchConfig, args + ["--use_data"]))
    result = b.trainer()(lambda: b.batch(2), b.values, micro_steps=2)  # 128 tokens = 2 micro-steps of 2 x 32
    assert (result.loss, result.norm) == (step["loss"], step["grad_norm"])
    trained = checkpoint.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))["model"]
    assert all(torch.equal(trained[k], v) for k, v in b.raw_model.state_dict().items())


def test_a_growing_window_is_timed_at_each_part_of_its_schedule():
    """The window grows 16 -> 64 over the run: bench.py times it at the middle of 4 parts (issue 36: it timed the
    full window only, the worst case), reports each, their average (total tokens over total time) and the slowest."""
    args = TINY + ["--doc_mask=True", "--eot_token=7", "--attn_window=64", "--window_start=16", "--max_iters=100", "--warmup_iters=10",
                   "--batch_size=2", "--total_batch_size=256", "--iters=1", "--warmup_iters_bench=1"]
    res = bench.run_bench(load_config(bench.BenchConfig, args))
    assert [p["window"] for p in res["phases"]] == [32, 48, 48, 64]  # iterations 12, 37, 62, 87 in multiples of 16
    times = [256 / p["tokens_per_sec"] for p in res["phases"]]
    assert res["tokens_per_sec"] == pytest.approx(256 * 4 / sum(times))
    assert "slowest" in bench.format_table(res) and "no document ends" in res["data"]
    assert len(bench.run_bench(load_config(bench.BenchConfig, TINY + ["--iters=1"]))["phases"]) == 1


def test_cli_error_is_one_line():
    r = run_cli(*TINY, "--batch_size=3", "--total_batch_size=512")
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "not a multiple" in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_bad_settings_raise_the_errors_main_reports():
    from gptlib.errors import ConfigError
    with pytest.raises(ConfigError, match="did you mean 'iters'"):
        bench.main(TINY + ["--itres=3"])
    with pytest.raises(ConfigError, match="vocab_size"):
        bench.main(TINY + ["--use_data", "--data_dir=/nonexistent"])
    with pytest.raises(ConfigError, match="iters must be"):
        bench.main(TINY + ["--iters=0"])


CAPPED = """import resource, sys
import bench
from gptlib.errors import run_command
held = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (held + 300 * 2**20,) * 2)  # 300 MB above what the imports hold
sys.exit(run_command(bench.main, sys.argv[1:]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the address space size from /proc")
def test_the_cpu_allocators_out_of_memory_is_does_not_fit():
    """Where malloc fails (ulimit -v, overcommit off), the CPU allocator raises "DefaultCPUAllocator: can't allocate
    memory", which --find_batch_size took for a crash: a traceback (issue 28). A real bench in a process whose
    address space is capped: the search now ends below the cap, and a fixed batch that does not fit is one line."""
    args = [sys.executable, "-c", CAPPED, "--device=cpu", "--n_layer=2", "--n_head=4", "--n_embd=64", "--block_size=1024",
            "--vocab_size=512", "--compile=False", "--iters=1", "--warmup_iters_bench=0", "--cpu_threads=1",
            "--total_batch_size=8192"]
    r = subprocess.run(args + ["--find_batch_size", "--max_batch_size=64"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    largest = int(r.stdout.split("largest micro-batch")[1].split(";")[0])
    assert 1 <= largest < 64 and f"{largest + 1} no" in r.stdout
    r = subprocess.run(args + ["--batch_size=64", "--total_batch_size=65536"], cwd=REPO, capture_output=True, text=True, timeout=300)
    err = [line for line in r.stderr.strip().splitlines() if not line.startswith("bench: ")]  # progress lines
    assert r.returncode == 1 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith("error: batch_size=64 at block_size=1024 does not fit in cpu memory"), err


@pytest.mark.slow  # two searches, ~30 s
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the address space size from /proc")
def test_find_batch_size_searches_under_the_memory_options_given():
    """--find_batch_size with --activation_checkpointing=full, in the same capped address space as above: the
    search runs the step the options make, so it finds a larger micro-batch than without them (issue 27)."""
    args = [sys.executable, "-c", CAPPED, "--device=cpu", "--n_layer=4", "--n_head=4", "--n_embd=64", "--block_size=1024",
            "--vocab_size=512", "--compile=False", "--iters=1", "--warmup_iters_bench=0", "--cpu_threads=1",
            "--total_batch_size=131072", "--find_batch_size", "--max_batch_size=128"]
    largest = {}
    for mode in ("none", "full"):
        r = subprocess.run(args + [f"--activation_checkpointing={mode}"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"activation_checkpointing={mode}" in r.stdout
        largest[mode] = int(r.stdout.split("largest micro-batch")[1].split(";")[0].split()[0])
    assert largest["none"] < largest["full"], largest
