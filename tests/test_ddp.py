"""train.py under torchrun on CPU (gloo): 2 ranks == 1 process with twice the gradient
accumulation, and a 2-rank checkpoint resumes on 1 rank on the right data."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptlib import checkpoint, runtime
from gptlib.settings import load_config
from gptlib.train_settings import TrainConfig
import train
from conftest import REPO, shakespeare
from test_faults import ITER_LINE, last_logged_iter
from test_train import TINY, make_dataset, metrics

# B=4, T=32, 512 tokens/step: 4 micro-steps in one process, 2 per rank with 2 ranks
COMMON = ["--total_batch_size=512", "--eval_interval=3", "--ckpt_interval=3", "--lr_decay_iters=6",
          "--data_order=stream"]  # offsets in tokens; the windows order under DDP: test_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    text = shakespeare()[:80_000]
    return make_dataset(tmp_path_factory.mktemp("ddp"), text, val_docs=20)


def torchrun(nproc, argv, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *argv]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(out_dir):
    return [(r["iter"], r["loss"]) for r in metrics(out_dir)]


def assert_close(a, b, rel=1e-4):
    assert [i for i, _ in a] == [i for i, _ in b]
    for (i, x), (_, y) in zip(a, b):
        assert abs(x - y) <= rel * abs(y), f"iter {i}: {x} vs {y}"


def test_two_ranks_match_one_process_and_resume_on_one(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    peak = ["--peak_tflops=1"]  # so both runs log an MFU
    assert train.run(TINY + COMMON + peak + [f"--data_dir={data}", f"--out_dir={one}", "--max_iters=6"]) == 0

    # 2 ranks, stopped at iter 3 (a checkpoint written by rank 0 alone), then resumed on 1 rank to iter 6
    r = torchrun(2, TINY + COMMON + peak + [f"--data_dir={data}", f"--out_dir={two}", "--max_iters=3"])
    assert r.stdout.count("world size 2") == 1  # only rank 0 prints
    assert "gradient accumulation 2 x 4 x 32" in r.stdout
    ckpt = checkpoint.load_checkpoint(str(two / "ckpt.pt"))
    assert ckpt["world_size"] == 2 and ckpt["loop"]["iter_num"] == 3
    assert ckpt["loop"]["loader"]["offset"] == 3 * 512  # one global stream position, whatever the world size
    assert_close(losses(two), losses(one)[:3])  # 2 ranks x 2 micro-steps == 1 process x 4 micro-steps
    # MFU counts both ranks' tokens against both ranks' peak (it used to be one GPU's): the model's FLOPs per
    # token, recovered from each run's MFU and tok/s, are the same
    fpt = {world: {round(r["mfu"] * world * 1e12 / r["tok_per_sec"]) for r in metrics(d)} for world, d in ((1, one), (2, two))}
    assert len(fpt[1]) == 1 and fpt[1] == fpt[2]

    assert train.run(TINY + COMMON + [f"--data_dir={data}", f"--out_dir={two}", "--max_iters=6", "--init_from=resume"]) == 0
    assert_close(losses(two), losses(one))  # the 1-rank continuation read the same tokens as the uninterrupted run
    evals_one = {r["iter"]: r["val/val"] for r in metrics(one, "eval")}
    evals_two = {r["iter"]: r["val/val"] for r in metrics(two, "eval")}
    assert evals_one.keys() == evals_two.keys()


@pytest.mark.slow
def test_one_rank_checkpoint_resumes_on_two(data, tmp_path):
    one, mixed = tmp_path / "one", tmp_path / "mixed"
    assert train.run(TINY + COMMON + [f"--data_dir={data}", f"--out_dir={one}", "--max_iters=6"]) == 0
    assert train.run(TINY + COMMON + [f"--data_dir={data}", f"--out_dir={mixed}", "--max_iters=3"]) == 0
    torchrun(2, TINY + COMMON + [f"--data_dir={data}", f"--out_dir={mixed}", "--max_iters=6", "--init_from=resume"])
    assert_close(losses(mixed), losses(one))


def test_sigterm_under_torchrun_checkpoints(data, tmp_path):
    """SIGTERM to the torchrun agent (as a scheduler does): it forwards the signal, both ranks finish the same
    step, rank 0 writes the checkpoint, and the run resumes."""
    proc = torchrun(2, TINY + COMMON + [f"--data_dir={data}", f"--out_dir={tmp_path}", "--max_iters=100000",
                                        "--ckpt_interval=100000", "--eval_interval=100000"], wait=False)
    deadline = time.time() + 120
    while last_logged_iter(tmp_path) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert "stopped by SIGTERM" in out
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["loop"]["iter_num"] == int(ITER_LINE.findall((tmp_path / "log.txt").read_text())[-1]) >= 2


def loader_stream(data_dir, world, micro_steps, B=2, T=100, state=None, seed=1, order="stream", rows=False):
    """(epoch, tokens) of every micro-batch (or, with rows, of every sequence) that `world` ranks read in
    `micro_steps` micro-steps, in the order a run reads them; and the loader state after them."""
    from gptlib.loader import TokenLoader
    loaders = [TokenLoader(str(data_dir), "train", B, T, rank, world, seed=seed, order=order) for rank in range(world)]
    for loader in loaders:
        if state:
            loader.load_state_dict(state)
    out = []
    for _ in range(micro_steps):
        for loader in loaders:
            x, y = loader.next_batch()
            assert torch.equal(x[:, 1:], y[:, :-1])
            if rows:
                out.extend((loader.epoch, tuple(row)) for row in x.tolist())
            else:
                out.append((loader.epoch, x.flatten().tolist()))
    return out, loaders[0].state_dict()


@pytest.mark.parametrize("lengths, same_tail", [([1000, 700], True), ([1000, 850], False)])
def test_loader_stream_across_world_sizes(tmp_path, lengths, same_tail):
    """The loader's state is one stream position: ranks read disjoint consecutive slices, and a state saved
    with 2 ranks continues on 1 rank where the stream stopped. The only difference between world sizes is the
    epoch's dropped tail (shorter than world*B*T+1 tokens): with 1,850 tokens and B*T=200, 1 rank reads a
    9th micro-batch that 2 ranks drop."""
    import numpy as np
    from gptlib import shards
    rng = np.random.default_rng(0)
    for i, n in enumerate(lengths):
        shards.write_shard(str(tmp_path / shards.shard_name("train", i)), rng.integers(0, 50000, n).astype(np.uint16))
    one, _ = loader_stream(tmp_path, 1, 12)
    two, _ = loader_stream(tmp_path, 2, 6)
    assert len({tuple(t) for _, t in two[:8]}) == 8  # disjoint slices
    assert (one == two) is same_tail
    assert one[:8] == two[:8]  # identical within the epoch
    # checkpoint after 2 steps of 2 ranks, resume on 1 rank: the same tokens as 1 rank all along
    _, state = loader_stream(tmp_path, 2, 2)
    assert state["offset"] == 800
    resumed, _ = loader_stream(tmp_path, 1, 8, state=state)
    assert resumed == one[4:12]


def test_shipped_tiny_config_runs_on_two_ranks_and_a_bad_split_is_one_line(tmp_path):
    """The tiny config divides over 2 ranks; a total batch that does not is one error line naming a micro-batch
    that works (printed by rank 0 only; torchrun's own failure summary follows it)."""
    cfg = load_config(TrainConfig, [str(REPO / "config" / "train_tiny_cpu.py")])
    assert cfg.total_batch_size % (cfg.batch_size * cfg.block_size * 2) == 0
    bad = torchrun(2, ["config/train_tiny_cpu.py", "--plan", "--total_batch_size=1024"], wait=False)
    _, err = bad.communicate(timeout=240)
    assert bad.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "--batch_size=4 keeps total_batch_size" in ours[0], err[-2000:]
