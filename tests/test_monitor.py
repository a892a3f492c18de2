"""monitor.py: FLOPs/MFU against hand-computed figures, peak-table lookups, planner arithmetic,
metrics.jsonl across a crash and resume, and trackers without their packages installed."""
import json
import re
import sys
import types

import pytest

from gptlib import monitor
from gptlib.errors import ConfigError
from gptlib.monitor import (MetricsLog, MonitorError, flops_per_token, format_plan, human_count, human_time,
                     lookup_peak_tflops, make_tracker, mfu, peak_flops, plan_run, read_metrics)

# GPT-2 124M by hand: per block 12*C^2 (attn 4C^2 + mlp 8C^2) + 13*C (biases 3C+C+4C+C, two LayerNorms 4C);
# 12 blocks + ln_f (2C) = 85,056,000 non-embedding params; lm_head 768 * 50304 = 38,633,472.
GPT2_NON_EMB = 12 * (12 * 768 ** 2 + 13 * 768) + 2 * 768
GPT2_FLOPS = 6 * (85_056_000 + 38_633_472) + 12 * 12 * 768 * 1024  # = 742,136,832 + 113,246,208


def test_flops_per_token_gpt2_124m_by_hand():
    assert GPT2_NON_EMB == 85_056_000
    assert GPT2_FLOPS == 855_383_040
    assert flops_per_token(GPT2_NON_EMB, 12, 768, 1024, vocab_size=50304) == GPT2_FLOPS
    # Kaplan et al.'s non-embedding count leaves the lm_head matmul out
    assert flops_per_token(GPT2_NON_EMB, 12, 768, 1024) == 6 * 85_056_000 + 113_246_208


def test_model_flops_per_token_uses_the_real_model_counts():
    from model import GPT, GPTConfig
    cfg = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    non_emb = 2 * (12 * 32 ** 2 + 13 * 32) + 2 * 32  # same hand count as above for the tiny model
    assert model.get_num_params(non_embedding=True) == non_emb
    assert monitor.model_flops_per_token(model) == 6 * (non_emb + 32 * 512) + 12 * 2 * 32 * 64
    assert monitor.model_flops_per_token(model, seq_len=32) == 6 * (non_emb + 32 * 512) + 12 * 2 * 32 * 32


def test_mfu_on_a_known_configuration():
    # GPT-2 124M at 20,000 tok/s on an RTX 4070 (58.3 TFLOPS bf16): 20e3 * 855,383,040 = 17.108 TFLOP/s
    assert mfu(20_000, GPT2_FLOPS, 58.3e12) == pytest.approx(0.293442, rel=1e-5)
    # nanoGPT's reference point: A100 at 312 TFLOPS
    assert mfu(100_000, GPT2_FLOPS, 312e12) == pytest.approx(0.274161, rel=1e-5)
    assert mfu(20_000, GPT2_FLOPS, None) is None


@pytest.mark.parametrize("name, dtype, want", [
    ("NVIDIA GeForce RTX 4070", "bfloat16", 58.3),
    ("NVIDIA GeForce RTX 4070", "float16", 58.3),
    ("NVIDIA GeForce RTX 4070 Ti", "bfloat16", 80.2),
    ("NVIDIA GeForce RTX 4070 SUPER", "bfloat16", 71.0),
    ("NVIDIA GeForce RTX 4070 Ti SUPER", "bfloat16", 88.3),
    ("NVIDIA GeForce RTX 3090", "bfloat16", 71.0),
    ("NVIDIA GeForce RTX 4080", "bfloat16", 97.5),
    ("NVIDIA GeForce RTX 4090", "float16", 165.2),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA A100 80GB PCIe", "bfloat16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "float16", 312.0),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA H200", "bfloat16", 989.5),
    ("NVIDIA L4", "bfloat16", 121.0),
    ("Tesla T4", "float16", 65.0),
    ("NVIDIA A10", "bfloat16", 125.0),
])
def test_peak_table_lookup(name, dtype, want):
    tflops, note = lookup_peak_tflops(name, dtype)
    assert tflops == want
    assert "TFLOPS" in note


@pytest.mark.parametrize("name", [
    "NVIDIA GeForce RTX 4070 Laptop GPU",  # a different power budget and clock: not the desktop 4070
    "NVIDIA GeForce RTX 3090 Ti",
    "NVIDIA GeForce RTX 4090 D",
    "NVIDIA A10G",  # AWS part, not the A10
    "NVIDIA H100 NVL",
    "NVIDIA GeForce GTX 1080 Ti",
    "Some Future GPU 9000",
])
def test_unknown_gpus_get_none_never_a_guess(name):
    tflops, note = lookup_peak_tflops(name, "bfloat16")
    assert tflops is None
    assert "--peak_tflops" in note


def test_peak_flops_cpu_override_and_missing_modes():
    assert peak_flops("cpu", "float32")[0] is None
    assert peak_flops("cuda", "float16", gpu_name="NVIDIA GeForce RTX 4070")[0] == 58.3e12
    assert peak_flops("cuda", "bfloat16", gpu_name="Tesla T4")[0] is None  # Turing has no bf16 tensor cores
    assert peak_flops("cuda", "float32", gpu_name="NVIDIA A100-SXM4-40GB")[0] is None
    flops, note = peak_flops("cpu", "float32", override_tflops=10.0)
    assert flops == 10e12 and "--peak_tflops" in note
    with pytest.raises(MonitorError, match="peak_tflops"):
        peak_flops("cuda", "bfloat16", override_tflops=-1.0)


def test_plan_gpt2_124m_10b_tokens_by_hand():
    p = plan_run(n_params=124_000_000, n_params_non_embedding=85_000_000, tokens_per_step=524_288,
                 max_iters=19_073, train_tokens=10_000_000_000, tokens_per_sec=50_000)
    assert p["total_tokens"] == 9_999_745_024
    assert p["tokens_per_param"] == pytest.approx(80.64, abs=0.01)
    assert p["chinchilla_multiple"] == pytest.approx(4.03, abs=0.01)
    assert p["chinchilla_tokens"] == 2_480_000_000
    assert p["chinchilla_iters"] == 4731  # ceil(2.48e9 / 524288) = ceil(4730.2)
    assert p["epochs"] == pytest.approx(0.99997, abs=1e-5)
    assert p["iters_per_epoch"] == 19_073  # 1e10 // 524288
    assert p["eta_run_s"] == pytest.approx(199_994.9, abs=0.1)  # 55.6 h
    assert p["eta_chinchilla_s"] == pytest.approx(49_600)
    assert p["eta_epoch_s"] == pytest.approx(200_000)
    text = "\n".join(format_plan(p))
    assert "10.00B tokens" in text and "80.6" in text and "4.03x Chinchilla" in text
    assert "55.6 h / 2.3 d" in text and "13.8 h" in text and "1.00 epochs" in text


def test_plan_resumed_small_dataset_and_no_throughput():
    # 3 epochs over a 1B-token dataset, resumed halfway, no tok/s known yet
    p = plan_run(124_000_000, 85_000_000, 524_288, 6_000, iter_num=3_000, train_tokens=1_048_576_000)
    assert p["epochs"] == pytest.approx(3.0)
    assert p["remaining_tokens"] == 3_000 * 524_288
    assert p["eta_run_s"] is None and p["eta_remaining_s"] is None
    lines = format_plan(p)
    assert any("3.00 epochs" in line for line in lines)
    assert any("n/a" in line and "bench.py" in line for line in lines)
    p = plan_run(124_000_000, 85_000_000, 524_288, 6_000, iter_num=3_000, tokens_per_sec=100_000)
    assert p["eta_remaining_s"] == pytest.approx(15_728.64)
    assert any("left from iter 3,000" in line for line in format_plan(p))
    assert any("not prepared yet" in line for line in format_plan(p))


def test_human_units():
    assert human_count(1_234_000_000) == "1.23B"
    assert human_count(9_999_745_024) == "10.00B"
    assert human_count(524_288) == "524K"
    assert human_count(85_000_000) == "85.0M"
    assert human_count(999) == "999" and human_count(0) == "0" and human_count(0.0) == "0"  # never "0.00 tok"
    assert human_time(45) == "45 s"
    assert human_time(750) == "12.5 min"
    assert human_time(5 * 3600) == "5.0 h"
    assert human_time(123_120) == "34.2 h / 1.4 d"
    assert human_time(None) == "n/a"


# ----------------------------------------------------------------------------- metrics.jsonl

def _run(log, iters, eval_every=5, tokens_per_step=1000):
    for it in iters:
        if it % eval_every == 0:
            log.log_eval(it, it * tokens_per_step, {"val": 5.0 - it * 0.1, "val-python": 4.0}, train_loss=5.0,
                         best=True, hellaswag=0.25)
        log.log_step(it, (it + 1) * tokens_per_step, loss=5.0 - it * 0.1, lr=6e-4, grad_norm=1.0, ms=100.0,
                     tok_per_sec=10_000.0, mfu=None)


def _keys(records):
    return [(r["kind"], r["iter"]) for r in records]


def test_metrics_log_fields_and_flush_per_line(tmp_path):
    import torch
    path = str(tmp_path / "metrics.jsonl")
    log = MetricsLog(path)
    log.log_step(0, 1000, loss=torch.tensor(4.5), lr=6e-4, grad_norm=torch.tensor(0.7), ms=12.5,
                 tok_per_sec=80_000.0, mfu=0.31)
    # not closed: a crash right now still leaves the complete line on disk
    rec = json.loads(open(path).read().splitlines()[0])
    assert rec["kind"] == "train" and rec["iter"] == 0 and rec["tokens"] == 1000
    assert rec["loss"] == 4.5 and rec["grad_norm"] == pytest.approx(0.7) and rec["mfu"] == 0.31
    assert {"lr", "ms", "tok_per_sec", "time"} <= set(rec)
    log.log_eval(0, 0, {"val": 10.9, "val-python": 11.0}, train_loss=10.95, best=True, hellaswag=0.26)
    ev = read_metrics(path)[1]
    assert ev["val/val"] == 10.9 and ev["val/val-python"] == 11.0 and ev["best"] is True and ev["hellaswag"] == 0.26
    log.close()


def test_metrics_log_stop_and_resume_has_no_duplicate_iterations(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    log = MetricsLog(path)
    _run(log, range(0, 13))  # the run logs up to iter 12, then is killed (no close, torn last line)
    with open(path, "a") as f:
        f.write('{"kind": "train", "iter": 13, "lo')
    # the last checkpoint was at iter 10: iterations 10.. run again
    log = MetricsLog(path, resume_iter=10)
    assert max(r["iter"] for r in read_metrics(path)) == 10
    _run(log, range(10, 16))
    log.close()
    records = read_metrics(path)
    keys = _keys(records)
    assert len(keys) == len(set(keys)), "duplicate iterations after resume"
    for kind in ("train", "eval"):
        iters = [i for k, i in keys if k == kind]
        assert iters == sorted(iters), f"{kind} records out of order"
    assert [i for k, i in keys if k == "train"] == list(range(16))
    assert [i for k, i in keys if k == "eval"] == [0, 5, 10, 15]


def test_metrics_log_resume_keeps_records_not_logged_again(tmp_path):
    # a train.py that does not re-evaluate at the resume iteration keeps the old eval record
    path = str(tmp_path / "metrics.jsonl")
    _run(MetricsLog(path), range(0, 8))
    log = MetricsLog(path, resume_iter=5)
    log.log_step(5, 6000, loss=4.5, lr=6e-4, grad_norm=1.0, ms=100.0, tok_per_sec=1e4)
    log.close()
    keys = _keys(read_metrics(path))
    assert keys.count(("eval", 5)) == 1 and keys.count(("train", 5)) == 1
    assert max(i for _, i in keys) == 5


def test_metrics_log_new_run_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    _run(MetricsLog(path), range(0, 3))
    old = open(path).read()
    log = MetricsLog(path)  # a fresh run in the same out_dir
    log.log_step(0, 1000, loss=9.0, lr=1e-4, grad_norm=1.0, ms=1.0, tok_per_sec=1.0)
    log.close()
    assert open(path + ".1").read() == old
    assert _keys(read_metrics(path)) == [("train", 0)]


def test_read_metrics_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 0}\nGARBAGE\n{"kind": "train", "iter": 1}\n')
    with pytest.raises(MonitorError, match="line 2"):
        read_metrics(str(path))


# ----------------------------------------------------------------------------- trackers

def test_null_tracker_by_default():
    t = make_tracker()
    t.log({"loss": 1.0}, step=0)
    t.close()


def test_missing_tracker_packages_give_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(MonitorError, match="pip install wandb"):
        make_tracker(wandb_log=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MonitorError, match="pip install tensorboard"):
        make_tracker(tensorboard_log=True, log_dir="unused")


def test_wandb_tracker_passes_logs_through(monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda project, name, config: calls.append(("init", project, name, config)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    t = make_tracker(wandb_log=True, project="gpt2", run_name="r1", config={"lr": 6e-4})
    t.log({"train/loss": 3.2}, step=7)
    t.close()
    assert calls == [("init", "gpt2", "r1", {"lr": 6e-4}), ("log", {"train/loss": 3.2}, 7), ("finish",)]


def test_grad_accum_and_batch_suggestion():
    assert monitor.grad_accum_steps(524_288, 8, 1024) == 64
    assert monitor.grad_accum_steps(524_288, 16, 1024, world_size=4) == 8
    with pytest.raises(ConfigError, match="not a multiple"):
        monitor.grad_accum_steps(524_288, 12, 1024)
    # 12 sequences fit on the card, but 12 does not divide 512 sequences per step: 8 does
    assert monitor.suggest_batch_size(12, 524_288, 1024) == (8, 64)
    assert monitor.suggest_batch_size(12, 6 * 1024, 1024) == (6, 1)
    assert monitor.suggest_batch_size(4, 1000, 1024) is None


def test_gpt2_124m_model_matches_the_hand_count():
    from model import GPT, GPTConfig
    model = GPT(GPTConfig())  # the real 124M shape: 124,475,904 parameters
    assert model.get_num_params(non_embedding=True) == GPT2_NON_EMB
    assert monitor.model_flops_per_token(model) == GPT2_FLOPS


# ----------------------------------------------------------------------------- pace and ETA (issue 19)

def test_events_left_counts_what_is_still_to_come():
    # after step 10 of 60, evals every 10: at 10 (top of the next loop), 20, ..., 60
    assert monitor.events_left(10, 60, 10) == 6
    assert monitor.events_left(11, 60, 10) == 5
    assert monitor.events_left(60, 60, 10) == 1  # the final eval has not run yet
    assert monitor.events_left(55, 60, 25) == 1  # no multiple left but the end
    assert monitor.events_left(50, 60, 25) == 2  # 50 and the end
    assert monitor.events_left(61, 60, 25) == 0


def test_pace_mean_leaves_out_compilation_and_keeps_recent_steps():
    pace = monitor.Pace(window=3, skip=2)
    for dt in (40.0, 9.0, 1.0, 1.0, 2.0, 3.0):
        pace.step(dt)
    assert pace.step_seconds(last=7.0) == 2.0  # mean of the last 3: the compile steps are gone
    assert monitor.Pace().step_seconds(last=7.0) == 7.0  # nothing measured yet: the step's own time
    pace.event("eval", 10.0)
    pace.event("eval", 20.0)
    assert pace.eta(steps_left=5, evals_left=2, ckpts_left=3, last=1.0) == 5 * 2.0 + 2 * 15.0  # no ckpt measured: 0


class FakeClock:
    """time.time() for train.py that only moves when the test says: steps, evals and checkpoints cost what the
    test decides, so the ETA can be checked against the remaining time exactly."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def test_eta_in_the_log_is_within_10_percent_of_the_real_remaining_time(tmp_path, monkeypatch):
    """A run whose steps take 1 s (the first two 30 s: compilation), evals 8 s and checkpoints 3 s, on a fake
    clock: from the first checkpoint on, every logged ETA is within 10% of the time that really remained."""
    import train
    from gptlib import checkpoint as ckpt_mod, evals, run_dir, runtime
    from test_train import TINY, make_dataset
    from conftest import shakespeare
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:60_000], val_docs=20)
    clock, steps, at_log = FakeClock(), [0], []
    monkeypatch.setattr(train, "time", clock)

    def synchronize(device):  # train.py synchronises once per step, just before it reads the clock
        steps[0] += 1
        clock.now += 30.0 if steps[0] <= 2 else 1.0
    monkeypatch.setattr(runtime, "synchronize", synchronize)
    real_eval, real_save = evals.eval_val_sets, run_dir.save_checkpoint

    def eval_val_sets(*a, **k):
        clock.now += 8.0
        return real_eval(*a, **k)

    def save_checkpoint(*a, **k):
        clock.now += 3.0
        return real_save(*a, **k)
    monkeypatch.setattr(evals, "eval_val_sets", eval_val_sets)
    monkeypatch.setattr(run_dir, "save_checkpoint", save_checkpoint)
    real_log_step = monitor.MetricsLog.log_step
    monkeypatch.setattr(monitor.MetricsLog, "log_step",
                        lambda self, it, *a, **k: at_log.append((it, clock.now)) or real_log_step(self, it, *a, **k))
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=60",
                             "--eval_interval=10", "--ckpt_interval=25", "--eval_tokens=64"]) == 0
    end = clock.now
    etas = [int(m.group(1)) * 60 + int(m.group(2)) for m in
            re.finditer(r"^iter +\d+ .*\| eta (\d+)m(\d\d)s$", (tmp_path / "run" / "log.txt").read_text(), re.M)]
    assert len(etas) == len(at_log) == 60
    checked = 0
    for (it, now), eta in zip(at_log, etas):
        if it >= 25:  # a checkpoint has been timed
            assert abs(eta - (end - now)) <= 0.1 * (end - now) + 1, (it, eta, end - now)
            checked += 1
    assert checked == 36
