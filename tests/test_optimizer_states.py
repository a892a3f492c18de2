"""Lean and sharded optimizer states (issue 27): torchao's 8-bit and 4-bit AdamW moments, bf16 Muon momentum and
ZeRO-1 sharding across ranks. Each resumes bit-identically on CPU; checkpoints hold the quantized states as
they are, as plain tensors; 2 ranks with sharded states match 1 process; a checkpoint moves between them."""
import dataclasses

import pytest
import torch

import train
from conftest import REPO, shakespeare
from gptlib import checkpoint, optim
from gptlib.train_settings import TrainConfig
from model import GPT, GPTConfig
from test_ddp import COMMON, assert_close, losses, torchrun
from test_train import TINY, make_dataset

pytest.importorskip("torchao")
MODERN = str(REPO / "config" / "recipe_modern.py")
KINDS = {  # name -> settings; each run is TINY (2 x 32, GPT-2 vocabulary: torchao quantizes wte and the MLP)
    "adamw_8bit": ["--adamw_states=8bit"],
    "adamw_4bit": ["--adamw_states=4bit"],
    "modern_8bit_bf16": [MODERN, "--adamw_states=8bit", "--muon_states=bf16", "--window_start=0", "--lr_schedule=cosine"],
}
MODERN_COSINE = [MODERN, "--window_start=0", "--lr_schedule=cosine"]  # a run stopped early resumes on cosine's schedule


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("states"), shakespeare()[:80_000], val_docs=20)


def args(data, out, *extra, dropout=0.1):
    """TINY + COMMON with extra (config files first), dropout on so the RNG state matters to a resume."""
    return ([a for a in extra if a.endswith(".py")] + TINY + COMMON + [a for a in extra if not a.endswith(".py")]
            + [f"--data_dir={data}", f"--out_dir={out}", f"--dropout={dropout}"])


def run(data, out, *extra, dropout=0.1):
    return train.run(args(data, out, *extra, dropout=dropout))


@pytest.mark.parametrize("kind", list(KINDS))
def test_lean_states_resume_bit_identically(kind, data, tmp_path):
    """6 iterations straight == 3, stop, resume to 6: the same losses and weights to the bit, and the checkpoint
    holds the states as kept (uint8 codes and fp32 scales; bf16 momentum), loadable without torchao."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert run(data, straight, *KINDS[kind], "--max_iters=6") == 0
    assert run(data, resumed, *KINDS[kind], "--max_iters=3") == 0
    assert run(data, resumed, *KINDS[kind], "--max_iters=6", "--init_from=resume") == 0
    assert losses(straight) == losses(resumed)
    a, b = (checkpoint.load_checkpoint(str(p / "ckpt.pt")) for p in (straight, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    states = [v for s in a["optimizer"]["adamw"]["state"].values() for v in s.values()]
    quantized = [v for v in states if isinstance(v, dict)]
    assert quantized and all(v["quantized"].startswith("torchao.optim.") for v in quantized)
    assert {v["tensors"]["codes"].dtype for v in quantized} == {torch.uint8}
    if "--muon_states=bf16" in KINDS[kind]:
        assert {s["momentum_buffer"].dtype for s in a["optimizer"]["muon"]["state"].values()} == {torch.bfloat16}
    # the planner's arithmetic is what the optimizer held: codes, scales, code tables, fp32 where torchao keeps it
    held = sum(t.numel() * t.element_size() for part in a["optimizer"].values() for st in part["state"].values()
               for v in st.values() for t in (v["tensors"].values() if isinstance(v, dict) else [v])
               if torch.is_tensor(t) and t.dim())
    cfg = TrainConfig(**a["config"])
    with torch.device("meta"):
        model = GPT(GPTConfig(**a["model_args"]))
    assert optim.state_bytes(model, cfg) == held
    assert optim.state_bytes(model, dataclasses.replace(cfg, sharding="optimizer"), 4) == held / 4


def test_states_convert_when_a_run_moves_to_leaner_ones(data, tmp_path):
    """A run resumed with leaner states (moving to a smaller card) continues: the loss stays near the fp32 run's."""
    fp32, moved = tmp_path / "fp32", tmp_path / "moved"
    assert run(data, fp32, *MODERN_COSINE, "--max_iters=6") == 0
    assert run(data, moved, *MODERN_COSINE, "--max_iters=3") == 0
    assert run(data, moved, *MODERN_COSINE, "--max_iters=6", "--init_from=resume", "--adamw_states=4bit",
               "--muon_states=bf16") == 0
    log = (moved / "log.txt").read_text()
    assert "resume: adamw_states 'fp32' -> '4bit'" in log and "resume: muon_states 'fp32' -> 'bf16'" in log
    assert_close(losses(moved)[3:], losses(fp32)[3:], rel=0.02)
    back = tmp_path / "back"  # and a lean checkpoint resumes with fp32 states (dequantized)
    assert run(data, back, "--adamw_states=8bit", "--max_iters=3") == 0
    assert run(data, back, "--max_iters=5", "--init_from=resume") == 0


def test_two_ranks_with_sharded_states_match_one_process_and_resume_across_world_sizes(data, tmp_path):
    """sharding="optimizer" (ZeRO-1) on 2 gloo ranks == 1 process with 2x accumulation; its checkpoint (written whole
    by rank 0) resumes on 1 process, and a 1-process checkpoint resumes sharded on 2 ranks."""
    one, two, back = tmp_path / "one", tmp_path / "two", tmp_path / "back"
    modern = MODERN_COSINE + ["--adamw_states=8bit", "--muon_states=bf16"]  # all three kinds of state, sharded
    assert run(data, one, *modern, "--max_iters=6", dropout=0) == 0  # no dropout: each rank draws its own masks
    torchrun(2, args(data, two, *modern, "--max_iters=3", "--sharding=optimizer", dropout=0))
    assert run(data, two, *modern, "--max_iters=6", "--init_from=resume", "--sharding=optimizer", dropout=0) == 0
    assert_close(losses(two), losses(one))
    assert "optimizer: AdamW8bit + Muon (bfloat16 momentum), states sharded over 2 ranks (ZeRO-1)" in (two / "log.txt").read_text()
    assert run(data, back, *modern, "--max_iters=3", dropout=0) == 0
    torchrun(2, args(data, back, *modern, "--max_iters=6", "--init_from=resume", "--sharding=optimizer", dropout=0))
    assert_close(losses(back), losses(one))


def test_the_plan_suggests_lean_states_and_sharding_when_checkpointing_is_not_enough(capsys):
    """760M on 12 GiB: checkpointing alone cannot fit it, so the plan names leaner states; applied, they fit."""
    base = [str(REPO / "config" / "train_gpt2_760m_3090.py"), "--plan", "--memory_gib=12"]
    assert train.run(base) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "fit" in x)
    assert line.startswith("does not fit on 12 GiB") and "--adamw_states=" in line, line
    fix = line.split("fits with ")[1].split(" (")[0].split(":")[0].split()
    assert train.run(base + fix) == 0
    assert "\nfits on 12 GiB" in capsys.readouterr().out


def test_muon_states_without_muon_is_one_line(data, tmp_path, capsys):
    from gptlib.errors import run_command
    assert run_command(train.main, TINY + [f"--data_dir={data}", f"--out_dir={tmp_path}", "--muon_states=bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "muon_states='bf16'" in err[0] and "--optimizer=muon" in err[0], err


@pytest.mark.parametrize("states", ["fp32", pytest.param("8bit", marks=pytest.mark.slow)])  # 8bit: 30 s
def test_fsdp_on_two_ranks_matches_one_process_and_resumes_across_world_sizes(states, data, tmp_path):
    """sharding='fsdp' (FSDP2: weights, gradients and AdamW states in slices) on 2 gloo ranks == 1 process with 2x
    accumulation; its checkpoint is a whole one (the same names as one process's, loaded by sample/eval/export
    alike) and resumes on 1 process; a 1-process checkpoint resumes on 2 fsdp ranks."""
    one, two, back = tmp_path / "one", tmp_path / "two", tmp_path / "back"
    adamw = [f"--adamw_states={states}"]
    assert run(data, one, *adamw, "--max_iters=6", dropout=0) == 0
    torchrun(2, args(data, two, *adamw, "--max_iters=3", "--sharding=fsdp", dropout=0))
    assert "weights, gradients and states sharded over 2 ranks (FSDP2)" in (two / "log.txt").read_text()
    saved, plain = (checkpoint.load_checkpoint(str(p / "ckpt_best.pt")) for p in (two, one))
    assert saved["model"].keys() == plain["model"].keys()
    model, _, _ = checkpoint.load_model(str(two / "ckpt.pt"), str(two))  # as sample.py, eval.py and export.py load it
    assert run(data, two, *adamw, "--max_iters=6", "--init_from=resume", dropout=0) == 0
    assert_close(losses(two), losses(one))
    assert run(data, back, *adamw, "--max_iters=3", dropout=0) == 0
    torchrun(2, args(data, back, *adamw, "--max_iters=6", "--init_from=resume", "--sharding=fsdp", dropout=0))
    assert_close(losses(back), losses(one))


@pytest.mark.parametrize("extra, words", [
    ([MODERN, "--sharding=fsdp"], ["sharding='fsdp'", "Muon", "--sharding=optimizer"]),
    (["--sharding=fsdp", "--hellaswag_interval=10"], ["sharding='fsdp'", "--hellaswag_interval=0"]),
])
def test_combinations_that_cannot_work_are_one_line(extra, words, data, tmp_path, capsys):
    from gptlib.errors import run_command
    assert run_command(train.main, args(data, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("world, way", [(2, "optimizer"), (4, "fsdp")])
def test_the_planner_suggests_sharding_on_several_gpus(world, way):
    """A 1.5B-parameter model (36 x 1280) on 8 GiB cards: on several GPUs the plan shards (ZeRO-1, or FSDP2 when
    the states alone are not enough) before it makes the states leaner; applied, the settings fit."""
    from gptlib import memory
    from gptlib.settings import load_config
    shape = ["--n_layer=36", "--n_embd=1280", "--n_head=20", "--batch_size=4"]
    cfg = load_config(TrainConfig, [str(REPO / "config" / "train_gpt2_760m_3090.py"), *shape,
                                    f"--memory_gib={12 if way == 'optimizer' else 8}"])
    with torch.device("meta"):
        model = GPT(GPTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)}))
    line = memory.fit_line(model, cfg, "bfloat16", memory.step_bytes(model, cfg, "bfloat16", world)["total"], world)
    assert f"--sharding={way}" in line and "--adamw_states" not in line, line
    fix = dict(a[2:].split("=") for a in line.split("fits with ")[1].split(" (")[0].split(":")[0].split())
    fixed = dataclasses.replace(cfg, **{k: int(v) if v.isdigit() else v for k, v in fix.items()})
    assert memory.step_bytes(model, fixed, "bfloat16", world)["total"] <= (1 - memory.FIT_MARGIN) * cfg.memory_gib * memory.GIB


def test_without_torchao_lean_states_are_one_line(data, tmp_path, capsys, monkeypatch):
    """A user without torchao asking for 8-bit states: one line naming the install and the fp32 alternative."""
    import sys
    from gptlib.errors import run_command
    monkeypatch.setitem(sys.modules, "torchao.optim", None)  # an import of it raises ImportError, as when not installed
    assert run_command(train.main, args(data, tmp_path / "run", "--adamw_states=8bit")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install torchao" in err[0] and "--adamw_states=fp32" in err[0], err
    assert not (tmp_path / "run").exists()


def test_fsdp_in_float16_is_one_line(data, tmp_path):
    """fp16's loss scaler needs whole gradients: under torchrun, sharding='fsdp' with dtype float16 stops at the
    start in one line (rank 0's, which speaks for every rank) and writes nothing."""
    p = torchrun(2, args(data, tmp_path / "run", "--sharding=fsdp", "--dtype=float16", "--max_iters=2"), wait=False)
    _, err = p.communicate(timeout=240)
    assert p.returncode != 0
    lines = [x for x in err.splitlines() if "sharding='fsdp' trains in bfloat16 or float32" in x]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--sharding=optimizer" in lines[0], err[-2000:]
    assert not (tmp_path / "run").exists()
