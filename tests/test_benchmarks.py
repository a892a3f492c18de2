"""The benchmark scripts run end to end at toy sizes and print what they measured, naming the machine.
(slow: each starts several Python processes.)"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEST_DATA, shakespeare
from test_train import make_dataset


def run_module(module, *argv, timeout=300):
    r = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_bench_memory_prints_train_and_eval_peaks_for_both_losses():
    out = run_module("benchmarks.bench_memory", "--n_layer=1", "--n_embd=64", "--n_head=2", "--batch_size=2",
                     "--block_size=256")
    assert "machine: " in out and " cores, torch " in out and "; device cpu" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(rows) == {"train", "eval", "HellaSwag"} and all("MB" in r for r in rows.values())
    assert "full logits" in rows["train"] and "chunked" in rows["train"]
    res = json.loads(out.strip().splitlines()[-1])["bench_memory"]
    assert set(res) == {"train-full", "train-chunked", "eval-full", "eval-chunked", "hellaswag"}


@pytest.mark.slow
def test_bench_recipes_end_to_end(tmp_path):
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:60_000], val_docs=20)
    args = [f"--data_dir={data}", f"--work_dir={tmp_path / 'work'}", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--block_size=32", "--batch_size=4", "--tokens=1280", "--eval_interval=5", "--eval_tokens=64",
            "--classic_lrs=1e-3", "--modern_scales=1", "--variants=windows"]
    out = run_module("benchmarks.bench_recipes", *args)
    assert "the modern recipe reaches the classic recipe's final val loss" in out and "machine: " in out
    res = json.loads((tmp_path / "work" / "results.json").read_text())
    assert set(res["final"]) == {"classic-lr0.001", "modern-x1", "modern-x1+windows"}
    assert (tmp_path / "work" / "recipes.png").exists()
    again = run_module("benchmarks.bench_recipes", *args)  # finished runs are not run again
    assert "--- classic" not in again


@pytest.mark.slow
def test_llamacpp_route_gives_the_same_greedy_text(tmp_path):
    """Only where llama-cpp-python and llama.cpp's converter are installed (not a test requirement: building it
    takes about 11 minutes): export, convert to f32 and f16 GGUFs, compare (benchmarks/check_llamacpp.py)."""
    pytest.importorskip("llama_cpp")
    from benchmarks.check_llamacpp import find_converter
    if find_converter("") is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py is not on the path")
    import train
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:60_000], val_docs=20)
    for name, recipe in (("classic", []), ("modern", ["config/recipe_modern.py"])):
        assert train.run(recipe + ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=4",
                                   "--total_batch_size=256", "--max_iters=20", "--warmup_iters=2", "--device=cpu",
                                   "--compile=False", f"--data_dir={data}", f"--out_dir={tmp_path / name}"]) == 0
        out = run_module("benchmarks.check_llamacpp", f"--out_dir={tmp_path / name}")
        result = json.loads(out.strip().splitlines()[-1])
        assert all(g["greedy_identical"] for g in result["ggufs"].values()), out


def test_bench_loss_reports_time_and_exactness_of_each_implementation():
    out = run_module("benchmarks.bench_loss", "--rows=300", "--n_embd=32", "--vocab_size=700", "--iters=2",
                     "--impls=project,full_eager,liger,project_fixed_vocab", "--chunk=128", "--json")
    rows = {r["impl"]: r for r in map(json.loads, out.strip().splitlines())}
    for impl in ("project", "full_eager", "project_fixed_vocab"):  # chunks of 128, 128, 44 rows
        assert rows[impl]["ms"] > 0 and rows[impl]["loss_err"] < 1e-5 and rows[impl]["grad_w_rel_err"] < 1e-5
        assert rows[impl]["device"] and rows[impl]["torch"]
    assert "skipped" in rows["liger"] or "ms" in rows["liger"]  # liger-kernel is optional


def test_bench_attention_times_each_backend_against_the_math_one():
    out = run_module("benchmarks.bench_attention", "--device=cpu", "--batch_size=1", "--n_head=2", "--head_size=16",
                     "--block_size=64", "--iters=2", "--backends=default,flash,cudnn,math", "--json")
    rows = {r["backend"]: r for r in map(json.loads, out.strip().splitlines())}
    for name in ("default", "math"):  # CPU has these; cudnn is skipped with the reason
        assert rows[name]["ms"] > 0 and rows[name]["tflops"] > 0 and rows[name]["max_rel_err"] < 1e-5
        assert rows[name]["device"] and rows[name]["torch"] and rows[name]["shape"] == [1, 2, 64, 16]
    assert "skipped" in rows["cudnn"] and rows["cudnn"]["skipped"]
    bad = subprocess.run([sys.executable, "-m", "benchmarks.bench_attention", "--backends=flash,fast"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown backend 'fast'" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_profile_step_and_eval_sample_run_on_a_tiny_model(tmp_path):
    out = run_module("benchmarks.profile_step", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                     "--batch_size=2", "--total_batch_size=64", "--device=cpu", "--compile=False", "--profiled_steps=1",
                     "--top=5")
    assert out.startswith("# ") and "aten::" in out
    kinds = {line[:22].strip(): float(line[22:31]) for line in out.splitlines()[2:] if line[:1].isalpha() and
             line[22:31].strip().replace(".", "").isdigit()}
    assert kinds["matmul"] > 0 and kinds["micro-step total"] > 0 and kinds["optimizer step total"] > 0, out
    assert abs(sum(v for k, v in kinds.items() if "total" not in k) - kinds["micro-step total"]) < 0.1, kinds
    import train
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:40_000], val_docs=40)
    assert train.run(["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
                      "--total_batch_size=128", "--max_iters=2", "--warmup_iters=1", "--device=cpu", "--compile=False",
                      f"--data_dir={data}", f"--out_dir={tmp_path / 'run'}"]) == 0
    out = run_module("benchmarks.bench_eval_sample", f"--out_dir={tmp_path / 'run'}", "--sizes=64,256")
    res = json.loads(out.strip().splitlines()[-1])
    assert res["windows"] > 8 and [r["tokens"] for r in res["rows"]] == [64, 256]
    assert all(r["even_diff"] >= 0 and r["stderr"] > 0 for r in res["rows"])


@pytest.mark.parametrize("items", ["loss profile attention", pytest.param("fit12 user", marks=pytest.mark.slow),
                                   pytest.param("fineweb36 real_speedrun speed_tables speed_blocks speed_heads speed_fp8 speed_all consumer_tiles", marks=pytest.mark.slow),
                                   pytest.param("recipes12_speedrun speedrun", marks=pytest.mark.slow),
                                   pytest.param("big350_12 big760_12 big760_24 big350_12_full", marks=pytest.mark.slow)])
def test_gpu_followup_script_dry_runs_its_items_on_cpu(tmp_path, items):
    """The prepared device command (benchmarks/gpu_followup.sh) must not be the thing that fails on a lent GPU:
    its CPU dry run ends every chosen item with rc=0 and hands back the timeline and one archive of logs."""
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path), "ITEMS": items, "PY": sys.executable,
           "DATA": str(TEST_DATA), "BUDGET": "100000"}  # the estimates are the device's, not a dry run's
    r = subprocess.run(["bash", "benchmarks/gpu_followup.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    timeline = (tmp_path / "timeline.txt").read_text()
    assert [line.split()[2] for line in timeline.splitlines() if " END " in line] == items.split()
    assert timeline.count("rc=0") == len(items.split()) and "SKIP" not in timeline, timeline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tgz", "timeline.txt"]


@pytest.mark.slow
def test_gpu_user_path_dry_runs_every_check_on_cpu(tmp_path):
    """The user's-path device check (benchmarks/gpu_user_path.py) on CPU at the tiny config: prepare, train,
    resume, sample, eval, export, fp16 (slow on a CPU: 4 steps), each check passing, so the device run fails
    only on what the GPU does."""
    out = run_module("benchmarks.gpu_user_path", "--device=cpu", "--tiny=True", "--compile=False", "--batch_size=4",
                     "--iters=4",
                     f"--parquet={TEST_DATA}/fineweb_sample.parquet",
                     f"--hellaswag_path={TEST_DATA}/hellaswag_val.jsonl", f"--work={tmp_path / 'work'}")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    checks = {r["check"]: r for r in lines if "check" in r}
    assert list(checks) == ["resume", "sample", "eval", "export", "fp16"] and all(r["ok"] for r in checks.values()), \
        checks
    assert checks["resume"]["bit_exact"] and checks["eval"]["rel_diff"] == 0.0  # CPU against CPU
    assert checks["export"]["same_top_token"] == 1.0 and "acc_norm" in checks["eval"]
    assert checks["fp16"]["first_loss"] != checks["fp16"]["first_loss_default"]  # it did run in fp16
    assert lines[-1] == {"user_path": "passed", "checks": 5, "failed": 0}


def test_gpu_user_path_refuses_a_used_folder_and_a_missing_parquet(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ckpt.pt").write_text("a run's")
    for argv, words in [([f"--work={tmp_path / 'old'}", "--parquet=x.parquet"], "is not empty"),
                        ([], "--parquet is required")]:
        r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_user_path", "--device=cpu", *argv], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "old" / "ckpt.pt").read_text() == "a run's"


@pytest.mark.slow  # four fresh processes (~15 s)
def test_bench_masks_builds_each_way_and_prints_its_cost():
    out = run_module("benchmarks.bench_masks", "--sizes=256")
    lines = [line for line in out.splitlines() if line.startswith("T ")]
    assert len(lines) == 4 and {"positions", "bounds"} <= {line.split("|")[2].strip() for line in lines}
    assert all(" ms | +" in line for line in lines)


def test_modded_shards_writes_the_format_record_18_reads(tmp_path):
    """Our shards as modded-nanogpt's .bin files (header 20240520, 1, count; uint16 tokens), the train split as many
    times as asked, for the device's modded18 item."""
    import numpy as np
    from benchmarks import modded_shards
    from gptlib import shards
    from test_train import make_dataset
    from conftest import shakespeare
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:20_000], val_docs=5)
    modded_shards.main([f"--data_dir={data}", f"--out_dir={tmp_path / 'bin'}", "--copies=2"])
    names = sorted(p.name for p in (tmp_path / "bin").iterdir())
    assert names == ["fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_val_000001.bin"]
    count, tokens = modded_shards.read_bin(tmp_path / "bin" / "fineweb_train_000002.bin")
    ours = np.concatenate([np.load(p) for p in shards.list_shards(data, "train")])
    assert count == len(ours) and np.array_equal(tokens, ours)


def test_every_ladder_rung_is_a_valid_run_at_the_yardstick_size():
    """Each rung of bench_recipes' ladder, with the ones above it, at the yardstick's size (BENCHMARKS.md, 4 x 256,
    rows of 1024 x 2) and at the GPU item's (12 x 768): settings train.py accepts, so a ladder never dies hours in."""
    from benchmarks import bench_recipes
    from gptlib.settings import load_config
    from gptlib.train_settings import TrainConfig
    for size in (["--n_layer=4", "--n_head=4", "--n_embd=256", "--block_size=1024", "--batch_size=2", "--window=256",
                  "--window_start=32", "--window_pattern=LS", "--value_embeds=2", "--data_dir=x"],
                 ["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=1024", "--batch_size=8", "--window=1792",
                  "--window_start=128", "--window_pattern=LSSSLS", "--value_embeds=3", "--data_dir=x"]):
        cfg = load_config(bench_recipes.RecipesConfig, size)
        base = [bench_recipes.MODERN, f"--n_layer={cfg.n_layer}", f"--n_head={cfg.n_head}", f"--n_embd={cfg.n_embd}",
                f"--block_size={cfg.block_size}", f"--batch_size={cfg.batch_size}",
                f"--total_batch_size={cfg.batch_size * cfg.block_size}", "--max_iters=122", "--warmup_iters=6"]
        added = []
        for rung, settings in bench_recipes.ladder(cfg):
            added += settings
            load_config(TrainConfig, base + added)  # raises a ConfigError naming the setting
