"""The GPU path on CPU stand-ins (issue 12): precision choice, devices under torchrun, per-rank dropout,
a precision change on resume, batch copies, and torch.compile on CPU (slow). MFU across ranks: test_ddp."""
import pytest
import torch

from gptlib import checkpoint, runtime
from gptlib.errors import ConfigError
import train
from conftest import shakespeare
from test_ddp import COMMON, assert_close, losses, torchrun
from test_train import TINY, make_dataset, metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    text = shakespeare()[:80_000]
    return make_dataset(tmp_path_factory.mktemp("gpu"), text, val_docs=20)


@pytest.mark.parametrize("capability, want", [((7, 5), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"),
                                              ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, want):
    """T4 (7.5) and V100 (7.0) report is_bf16_supported() but only emulate it: they get fp16 + GradScaler."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert runtime.pick_dtype("cuda:0") == want
    assert runtime.pick_dtype("cpu") == "float32"


@pytest.mark.parametrize("device, message", [
    ("cuda:1", "each rank uses the GPU cuda:LOCAL_RANK; pass --device=cuda"),
    ("mps", "torchrun with device='mps' is not supported"),
    ("cuda", "CUDA is not available here"),
])
def test_devices_under_torchrun_are_local_rank_gpus_or_refused(monkeypatch, device, message):
    """--device=cuda:N used to fall back silently to CPU/gloo under torchrun."""
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        runtime.start_processes(device)


def test_dropout_seed_differs_per_rank_and_step_and_is_reproducible():
    seeds = {(r, s): runtime.step_seed(1337, r, s) for r in range(4) for s in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert runtime.step_seed(1337, 1, 7) == seeds[(1, 7)] and runtime.step_seed(7, 1, 7) != seeds[(1, 7)]


def test_precision_change_on_resume(data, tmp_path):
    """bf16 -> fp16 (the loss scaler starts afresh instead of failing in GradScaler.load_state_dict), and back."""
    base = TINY + [f"--data_dir={data}", f"--out_dir={tmp_path}", "--eval_interval=2"]
    assert train.run(base + ["--max_iters=2", "--dtype=bfloat16"]) == 0
    assert train.run(base + ["--max_iters=4", "--dtype=float16", "--init_from=resume"]) == 0
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["dtype"] == "float16"
    assert train.run(base + ["--max_iters=6", "--dtype=bfloat16", "--init_from=resume"]) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "resume: dtype bfloat16 -> float16: the fp16 loss scaler starts afresh" in log
    assert [r["iter"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_batch_copier_passes_cpu_batches_through():
    x, y = torch.arange(6).view(2, 3), torch.arange(1, 7).view(2, 3)
    cx, cy = runtime.BatchCopier("cpu")(x, y)
    assert cx is x and cy is y


@pytest.mark.slow
def test_compiled_run_with_eval_and_resume_matches_eager(data, tmp_path):
    """torch.compile on CPU (inductor and the system C compiler): a run with evals, stopped and resumed,
    gives the eager run's losses."""
    base = TINY + [f"--data_dir={data}", "--eval_interval=2", "--ckpt_interval=2"]
    assert train.run(base + [f"--out_dir={tmp_path / 'eager'}", "--max_iters=4"]) == 0
    assert train.run(base + [f"--out_dir={tmp_path / 'compiled'}", "--max_iters=2", "--compile=True"]) == 0
    assert "compiling the model" in (tmp_path / "compiled" / "log.txt").read_text()
    assert train.run(base + [f"--out_dir={tmp_path / 'compiled'}", "--max_iters=4", "--compile=True",
                             "--init_from=resume"]) == 0
    assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rel=1e-3)


@pytest.mark.slow
def test_compiled_ddp_on_two_ranks_matches_eager(data, tmp_path):
    """DDP wrapped first, then compiled (PyTorch's order, so the all-reduce can overlap the backward)."""
    common = TINY + COMMON + [f"--data_dir={data}", "--max_iters=3"]
    torchrun(2, common + [f"--out_dir={tmp_path / 'eager'}"])
    torchrun(2, common + [f"--out_dir={tmp_path / 'compiled'}", "--compile=True"])
    assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rel=1e-3)
