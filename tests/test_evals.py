"""Evaluation: shard loss, several val sets, HellaSwag scoring, HumanEval loss, eval.py."""
import contextlib
import dataclasses
import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch
import torch.nn.functional as F

import eval as eval_script
from gptlib.errors import ConfigError, run_command
from gptlib import evals
from gptlib import checkpoint, runtime
from gptlib import shards
from model import GPT, GPTConfig
from conftest import shakespeare

NO_AUTOCAST = contextlib.nullcontext()
TINY = dict(n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("gpt2")


def tiny_model(block_size=32, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, **{**TINY, **kw}))


@pytest.fixture
def shard_dir(tmp_path, corpus, enc):
    """Real FineWeb text as train/val/val-extra shards, small shards so batches straddle them."""
    texts = pq.read_table(corpus / "fineweb_sample.parquet", columns=["text"]).column("text").to_pylist()[:40]
    tokens = []
    for t in texts:
        tokens += [shards.EOT] + enc.encode_ordinary(t)
    d = tmp_path / "data"
    d.mkdir()
    for split, part in (("train", tokens[:6000]), ("val", tokens[6000:8100]), ("val-extra", tokens[8100:9000])):
        w = shards.ShardWriter(str(d), split, shard_tokens=700)
        w.add(np.array(part))
        w.close()
    return d, tokens


# ----------------------------------------------------------------------------- split_loss

def test_split_loss_is_the_mean_over_windows_at_even_strides(shard_dir):
    d, tokens = shard_dir
    val = np.array(tokens[6000:8100])  # 2,100 tokens over three shards of 700: windows straddle them
    model = tiny_model(dropout=0.3)  # dropout makes a forgotten model.eval() show
    model.train()
    B, T, max_tokens = 4, 32, 5 * 32
    got = evals.split_loss(model, str(d), "val", B, T, max_tokens, "cpu", NO_AUTOCAST)
    assert model.training  # the previous mode is restored
    assert evals.split_loss(model, str(d), "val", B, T, max_tokens, "cpu", NO_AUTOCAST) == got  # same windows each call

    starts = evals.eval_windows(len(val), T, max_tokens)
    assert starts == [0, 13 * 32, 26 * 32, 39 * 32, 52 * 32]  # 65 windows in the split, every 13th
    model.eval()
    with torch.no_grad():
        per_window = [model(torch.from_numpy(val[s:s + T].astype(np.int64))[None],
                            torch.from_numpy(val[s + 1:s + T + 1].astype(np.int64))[None])[1].item() for s in starts]
    assert got.loss == pytest.approx(np.mean(per_window), rel=1e-6)
    assert got.stderr == pytest.approx(np.std(per_window, ddof=1) / math.sqrt(5), rel=1e-4)
    assert got.tokens == 160 and got.windows == 5 and float(got) == got.loss
    assert not model.training


def test_eval_windows_cover_the_whole_split_or_spread_over_it(shard_dir):
    assert evals.eval_windows(900, 32) == [32 * i for i in range(28)]  # 0: the whole split, each token once
    assert evals.eval_windows(900, 32, 10_000) == evals.eval_windows(900, 32)  # more than there is: all of it
    assert evals.eval_windows(900, 32, 96) == [0, 288, 576]  # 3 of 28 windows, evenly spread
    assert evals.eval_windows(900, 32, 1) == [0]  # at least one
    assert evals.eval_windows(32, 32) == []  # 32 tokens make no window of 32 inputs + 1 target
    d, _ = shard_dir
    model = tiny_model()
    whole = evals.split_loss(model, str(d), "val-extra", 4, 32, 0, "cpu", NO_AUTOCAST)
    assert whole.tokens == 28 * 32
    assert whole.loss == pytest.approx(evals.split_loss(model, str(d), "val-extra", 7, 32, 10_000, "cpu", NO_AUTOCAST).loss)
    with pytest.raises(shards.DataError, match="fewer than one window"):
        evals.split_loss(model, str(d), "val-extra", 4, 1024, 0, "cpu", NO_AUTOCAST)


# ----------------------------------------------------------------------------- several val sets

def test_parse_val_sets_and_errors(shard_dir, tmp_path):
    d, _ = shard_dir
    other = f"{d}:val-extra"
    sets = evals.parse_val_sets(["val", other], str(d))
    assert sets == [("val", str(d), "val"), (other, str(d), "val-extra")]
    assert evals.val_split_names(str(d)) == ["val", "val-extra"]
    assert evals.check_primary_val("", sets) == "val"
    assert evals.check_primary_val(other, sets) == other
    with pytest.raises(ConfigError, match="primary_val='val-x' is not one of val_sets"):
        evals.check_primary_val("val-x", sets)
    with pytest.raises(shards.DataError, match=r"no 'val-python' shards .*splits there: train, val, val-extra"):
        evals.parse_val_sets(["val-python"], str(d))
    with pytest.raises(shards.DataError, match="does not exist"):
        evals.parse_val_sets([f"{tmp_path}/missing:val"], str(d))
    with pytest.raises(ConfigError, match="twice"):
        evals.parse_val_sets(["val", "val"], str(d))
    with pytest.raises(ConfigError, match="empty"):
        evals.parse_val_sets([], str(d))

    model = tiny_model()
    losses = evals.eval_val_sets(model, sets, 2, 32, 128, "cpu", NO_AUTOCAST)
    assert list(losses) == ["val", other]
    assert losses[other] == evals.split_loss(model, str(d), "val-extra", 2, 32, 128, "cpu", NO_AUTOCAST)


# ----------------------------------------------------------------------------- span scoring

def test_window_left_truncates_and_masks_the_continuation():
    inputs, targets, mask = evals._window(list(range(10)), [100, 101], block_size=5)
    assert inputs == [6, 7, 8, 9, 100]
    assert targets == [7, 8, 9, 100, 101]
    assert mask == [0, 0, 0, 1, 1]
    assert evals._window([1, 2], [3], 8) == ([1, 2], [2, 3], [0, 1])


def test_strided_windows_score_each_token_once_with_enough_context():
    context, continuation, block = list(range(1000, 1030)), list(range(50)), 16
    tokens = context + continuation
    scored = []
    for inputs, targets, mask in evals._strided_windows(context, continuation, block):
        assert len(inputs) == len(targets) == len(mask) <= block
        lo = tokens.index(inputs[0])
        assert inputs == tokens[lo:lo + len(inputs)] and targets == tokens[lo + 1:lo + 1 + len(targets)]
        for i, m in enumerate(mask):
            if m:
                assert i + 1 >= block // 2  # at least half a block of context before each scored token
                scored.append(targets[i])
    assert scored == continuation


def test_batched_padded_scoring_matches_one_sequence_at_a_time():
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (5, 17, 32, 9):
        seq = torch.randint(0, shards.VOCAB_SIZE, (n + 1,), generator=g).tolist()
        rows.append((seq[:-1], seq[1:], [0] * (n // 2) + [1] * (n - n // 2)))
    sums, counts = evals._row_losses(model, rows, "cpu", NO_AUTOCAST, batch_rows=4)
    for (inputs, targets, mask), s, c in zip(rows, sums, counts):
        with torch.no_grad():
            logits, _ = model(torch.tensor([inputs]))
        losses = F.cross_entropy(logits[0], torch.tensor(targets), reduction="none")
        assert s == pytest.approx(float(losses[torch.tensor(mask, dtype=torch.bool)].sum()), rel=1e-5)
        assert c == sum(mask)


# ----------------------------------------------------------------------------- HellaSwag

def test_hellaswag_acc_and_acc_norm_differ_on_endings_of_different_length():
    # ending 0: 1 token, loss 3.0; ending 1: 4 tokens, loss 8.0 in all (2.0 each); 2, 3 worse
    sums = torch.tensor([[3.0, 8.0, 20.0, 9.0]])
    counts = torch.tensor([[1.0, 4.0, 5.0, 3.0]])
    pred, pred_norm = evals.hellaswag_predict(sums, counts)
    assert pred.tolist() == [0]  # least total loss
    assert pred_norm.tolist() == [1]  # least loss per token


def _memorised_items(corpus):
    """Items built from tinyshakespeare: context = a line, right ending = the next line,
    wrong endings = the next lines of the other items, so all four items share the same
    four endings (all seen in training) and only the context tells which is right."""
    lines = [l.strip() for l in shakespeare().splitlines() if len(l.strip()) > 20]
    pairs = [(lines[i], lines[i + 1]) for i in range(0, 24, 6)]  # 4 (context, continuation) pairs
    items = []
    for k, (ctx, right) in enumerate(pairs):
        wrong = [pairs[(k + j) % len(pairs)][1] for j in (1, 2, 3)]
        label = k % 4
        endings = wrong[:label] + [right] + wrong[label:]
        items.append({"ctx": ctx, "endings": endings, "label": label})
    return items


def test_hellaswag_picks_the_ending_a_trained_model_has_seen(corpus, enc):
    items = _memorised_items(corpus)
    T = 26  # the longest item is 25 tokens
    x = torch.zeros(len(items), T, dtype=torch.long)
    y = torch.full((len(items), T), -1, dtype=torch.long)  # -1: padding, ignored by the loss
    for i, item in enumerate(items):
        seq = (enc.encode(item["ctx"]) + enc.encode(" " + item["endings"][item["label"]]))[:T + 1]
        x[i, :len(seq) - 1] = torch.tensor(seq[:-1])
        y[i, :len(seq) - 1] = torch.tensor(seq[1:])
    model = tiny_model(block_size=T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(45):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0, "the tiny model failed to memorise its training lines"
    before = tiny_model(block_size=T)  # the same model untrained, as a control
    untrained = evals.hellaswag(before, "cpu", NO_AUTOCAST, items=items)
    r = evals.hellaswag(model, "cpu", NO_AUTOCAST, items=items, batch_items=3)
    assert r == {"acc": 1.0, "acc_norm": 1.0, "acc_norm_chars": 1.0, "n": 4}
    assert untrained["n"] == 4 and untrained["acc"] < 1.0


def test_hellaswag_on_real_items_parses_truncates_and_shards_by_rank(corpus):
    path = corpus / "hellaswag_val.jsonl"
    items = evals.load_hellaswag(str(path))
    assert len(items) == 50 and all(len(it["endings"]) == 4 for it in items)
    model = tiny_model(block_size=16)  # shorter than many contexts: they are left-truncated
    calls = []
    whole = evals.hellaswag(model, "cpu", NO_AUTOCAST, path=str(path), limit=10, batch_items=4,
                            progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # eval.py's progress bar
    assert whole["n"] == 10 and 0.0 <= whole["acc"] <= 1.0 and 0.0 <= whole["acc_norm"] <= 1.0
    # DDP sharding: ranks take items i % world == rank; their counts add up to the single-process run
    parts = [evals.hellaswag(model, "cpu", NO_AUTOCAST, items=items, limit=10, rank=r, world_size=3)
             for r in range(3)]
    assert [p["n"] for p in parts] == [4, 3, 3]
    assert sum(p["acc"] * p["n"] for p in parts) == pytest.approx(whole["acc"] * 10)
    assert sum(p["acc_norm"] * p["n"] for p in parts) == pytest.approx(whole["acc_norm"] * 10)


def test_hellaswag_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "h.jsonl"
    bad.write_text(json.dumps({"ctx": "a", "endings": ["b", "c"], "label": 0}) + "\n")
    with pytest.raises(shards.DataError, match="4 endings"):
        evals.load_hellaswag(str(bad))
    with pytest.raises(shards.DataError, match="cannot read HellaSwag file"):
        evals.load_hellaswag(str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------- HumanEval

def test_humaneval_loss_counts_solution_tokens_and_matches_a_direct_computation(corpus, enc):
    path = corpus / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f][:4]
    model = tiny_model(block_size=512)
    r = evals.humaneval(model, "cpu", NO_AUTOCAST, str(path), limit=4)
    n_tokens = sum(len(enc.encode(p["canonical_solution"])) for p in problems)
    assert r["n"] == 4 and r["tokens"] == n_tokens
    total = 0.0
    with torch.no_grad():
        for p in problems:
            prompt, sol = enc.encode(p["prompt"]), enc.encode(p["canonical_solution"])
            seq = torch.tensor([prompt + sol])
            assert seq.size(1) <= 512
            logits, _ = model(seq[:, :-1])
            losses = F.cross_entropy(logits[0], seq[0, 1:], reduction="none")
            total += losses[len(prompt) - 1:].sum().item()
    assert r["loss"] == pytest.approx(total / n_tokens, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
    # a model with a short context scores the same tokens through overlapping windows
    short = evals.humaneval(tiny_model(block_size=16), "cpu", NO_AUTOCAST, str(path), limit=4)
    assert short["tokens"] == n_tokens and math.isfinite(short["loss"])


# ----------------------------------------------------------------------------- eval.py

@pytest.fixture
def ckpt_run(tmp_path, shard_dir):
    d, _ = shard_dir
    cfg = GPTConfig(block_size=32, **TINY)
    model = tiny_model()
    out = tmp_path / "out"
    out.mkdir()
    checkpoint.save_checkpoint(str(out / "ckpt.pt"), {"model": model.state_dict(), "model_args": dataclasses.asdict(cfg),
                                                    "config": {"data_dir": str(d)}, "loop": {"iter_num": 42}})
    return out, model, d


def test_eval_script_end_to_end(ckpt_run, corpus, tmp_path):
    out, model, d = ckpt_run
    result = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "eval.py", f"--out_dir={out}", "--max_tokens=96", "--batch_size=4",
                           "--humaneval", f"--humaneval_path={corpus / 'HumanEval.jsonl.gz'}",
                           "--humaneval_limit=2", "--hellaswag", f"--hellaswag_path={corpus / 'hellaswag_val.jsonl'}",
                           "--hellaswag_limit=8", f"--json_out={result}"],
                          cwd=eval_script.__file__.rsplit("/", 1)[0], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "iter 42" in proc.stdout
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert set(lines) == {"val", "val-extra", "hellaswag", "humaneval"}  # every val* split by default
    got = json.loads(result.read_text())["results"]
    want = evals.split_loss(model, str(d), "val", 4, 32, 96, "cpu", NO_AUTOCAST)
    assert got["val"]["loss"] == pytest.approx(want.loss, rel=1e-5) and got["val"]["tokens"] == 96
    assert f"loss {want.loss:.4f}" in lines["val"] and "96 tokens scored: 3 windows of 32 at even strides over 2,100" in lines["val"]
    assert got["hellaswag"]["n"] == 8 and got["humaneval"]["n"] == 2


def _run_main(argv, capsys):
    code = run_command(eval_script.main, argv)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return code, err


def test_eval_script_clear_errors(ckpt_run, tmp_path, capsys):
    out, _, d = ckpt_run
    code, err = _run_main([f"--out_dir={out}", "--split=val-python"], capsys)
    assert code == 1 and "no 'val-python' shards" in err and "val, val-extra" in err
    (tmp_path / "nothing").mkdir()
    code, err = _run_main([f"--out_dir={tmp_path / 'nothing'}"], capsys)
    assert code == 1 and "no ckpt_best.pt or ckpt.pt" in err
    code, err = _run_main([f"--out_dir={out}", "--max_tokns=3"], capsys)
    assert code == 2 and "did you mean 'max_tokens'" in err
    code, err = _run_main([f"--out_dir={out}", "--block_size=64"], capsys)
    assert code == 2 and "exceeds the model's context" in err
    code, err = _run_main([f"--out_dir={out}", "--humaneval"], capsys)
    assert code == 2 and "--humaneval_path" in err
    code, err = _run_main(["--init_from=gpt3"], capsys)
    assert code == 2 and "init_from must be 'resume' (out_dir's" in err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code, err = _run_main([f"--ckpt={tmp_path / 'bad.pt'}", f"--data_dir={d}"], capsys)
    assert code == 1 and "corrupt" in err


# ----------------------------------------------------------------------------- DDP

def _ddp_worker(rank, world, init_file, data_dir, hellaswag_path, humaneval_path, out_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = tiny_model()
    r = {"val": evals.split_loss(model, data_dir, "val", 2, 32, 96, "cpu", NO_AUTOCAST, rank=rank, world_size=world).loss,
         "hellaswag": evals.hellaswag(model, "cpu", NO_AUTOCAST, path=hellaswag_path, limit=7, rank=rank, world_size=world)}
    if rank == 0:  # on one rank only, as train.py does: world_size=1 must not wait for the others
        r["humaneval"] = evals.humaneval(model, "cpu", NO_AUTOCAST, humaneval_path, limit=2)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(r, f)


@pytest.mark.slow
def test_results_under_ddp_match_one_process(shard_dir, corpus, tmp_path):
    d, _ = shard_dir
    hs, he = str(corpus / "hellaswag_val.jsonl"), str(corpus / "HumanEval.jsonl.gz")
    out = tmp_path / "r"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(d), hs, he, str(out)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"r.{k}").read_text()) for k in range(2))
    model = tiny_model()
    assert r0["val"] == r1["val"] == pytest.approx(evals.split_loss(model, str(d), "val", 4, 32, 96, "cpu", NO_AUTOCAST).loss, rel=1e-5)
    assert r0["hellaswag"] == r1["hellaswag"] == evals.hellaswag(model, "cpu", NO_AUTOCAST, path=hs, limit=7)
    assert r0["humaneval"] == pytest.approx(evals.humaneval(model, "cpu", NO_AUTOCAST, he, limit=2))


def test_eval_script_skips_a_found_split_smaller_than_a_window(ckpt_run, tmp_path, capsys):
    """github-code gives every language a val set, some of a few tokens: evaluating "every val* split" skips
    those with a line instead of failing; asked for by name, the split is still an error."""
    import shutil
    out, _, d = ckpt_run
    data = tmp_path / "with_tiny_split"
    shutil.copytree(d, data)
    shards.write_shard(str(data / shards.shard_name("val-tiny", 0)), np.full(20, 464, np.uint16))
    assert run_command(eval_script.main, [f"--out_dir={out}", f"--data_dir={data}", "--max_tokens=64", "--batch_size=2"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["val", "val-extra", "skipped"]
    assert lines[-1].startswith("skipped 1 split(s) shorter than one window of 33 tokens: val-tiny (20)")
    code, err = _run_main([f"--out_dir={out}", f"--data_dir={data}", "--split=val-tiny", "--batch_size=2"], capsys)
    assert code == 1 and "fewer than one window" in err
    only_tiny = tmp_path / "only_tiny"
    (only_tiny).mkdir()
    for name in ("train", "val-tiny"):
        shards.write_shard(str(only_tiny / shards.shard_name(name, 0)), np.full(20, 464, np.uint16))
    code, err = _run_main([f"--out_dir={out}", f"--data_dir={only_tiny}"], capsys)  # evaluated nothing: an error
    assert code == 1 and "nothing was evaluated" in err
