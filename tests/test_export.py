"""export.py (issue 17): every family goes through one mapping table per target and loads in transformers with
the project's logits: classic (GPT2LMHeadModel) and modern (ApertusForCausalLM), tied and untied, with and
without biases, nanoGPT's exact GELU. Tokenizer and generation configs, ordinary file permissions, a model
card, and a refused or failed export that writes nothing."""
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest
import tiktoken
import torch

from export import ExportError, export
from gptlib import exports
from gptlib.checkpoint import save_checkpoint
from gptlib.shards import VOCAB_SIZE
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
MODERN = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", bias=False)
TRICKY = ["Hello world", "naïve café — 東京", "<code>x += 1</code>", "  two  spaces\tand a tab\n\n",
          "1234567890 3.14159", "don't won't y'all", "emoji 🤖🎉 and ZWJ 👩‍💻", "trailing space "]


def tiny_model(seed=0, **kw):
    args = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    args.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**args)).eval()
    with torch.no_grad():  # non-trivial norm gains and biases (and a non-zero head), so a dropped one would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            elif p.abs().max() == 0:
                p.normal_(0, 0.02)
    return model


def load_hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def assert_same_model(model, folder, n=20):
    """Logits within 1e-4 in fp32, and the same 20 greedy tokens."""
    hf = load_hf(folder)
    x = torch.randint(0, VOCAB_SIZE, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)[0][..., :VOCAB_SIZE]
        theirs = hf(x).logits
        assert theirs.shape == (2, 40, VOCAB_SIZE)
        assert (ours - theirs).abs().max().item() < 1e-4
        prompt = x[:1, :8]
        mine = model.generate(prompt, n, temperature=0, sample_vocab_size=VOCAB_SIZE)
        hf_out = hf.generate(prompt, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    assert mine.tolist() == hf_out.tolist()


FAMILIES = {
    "classic tied": dict(), "classic untied": dict(tie_weights=False), "classic no bias": dict(bias=False),
    "nanoGPT gelu": dict(mlp_act="gelu_exact"),
    "modern untied": dict(MODERN, tie_weights=False, zero_init=True), "modern tied": dict(MODERN),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_in_transformers_with_the_same_logits_and_greedy_text(tmp_path, family):
    model = tiny_model(seed=1, **FAMILIES[family])
    written, target = export(model, str(tmp_path / "hf"))
    assert target == ("apertus" if "modern" in family else "gpt2")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json", "vocab.json",
            "merges.txt", "README.md"} <= set(written)
    assert_same_model(model, tmp_path / "hf")


def test_export_script_writes_tokenizer_generation_config_card_and_ordinary_permissions(tmp_path):
    model = tiny_model(**MODERN, tie_weights=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    save_checkpoint(str(out_dir / "ckpt.pt"), {"model": model.state_dict(), "model_args": vars(model.config),
                                               "config": {"data_dir": "data/fineweb"},
                                               "loop": {"iter_num": 10, "best_val": 4.25, "tokens": 81920}})
    (out_dir / "metrics.jsonl").write_text('{"kind": "eval", "iter": 10, "hellaswag/acc_norm": 0.2975}\n')
    to = tmp_path / "hf"
    r = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), f"--out_dir={out_dir}", f"--to={to}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "as ApertusForCausalLM" in r.stdout
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(to):
        assert stat.S_IMODE(os.stat(to / name).st_mode) == 0o666 & ~umask, name  # safetensors alone gave 0600
    gen = json.loads((to / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == 50256
    tok_cfg = json.loads((to / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == 64 and tok_cfg["eos_token"] == "<|endoftext|>"
    card = (to / "README.md").read_text()
    assert "ApertusForCausalLM" in card and "4.2500" in card and "81.9K" in card and "0.2975" in card
    tok = transformers.AutoTokenizer.from_pretrained(to)
    enc = tiktoken.get_encoding("gpt2")
    for text in TRICKY:
        assert tok(text)["input_ids"] == enc.encode_ordinary(text), text
    assert tok.pad_token_id == 50256 and tok.model_max_length == 64
    hf = load_hf(to)
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=tok)
    out = pipe(["Hello", "Once upon a"], max_new_tokens=5, do_sample=False, batch_size=2)  # batched: needs a pad token
    assert len(out) == 2


def test_what_no_native_target_expresses_exports_as_its_own_code(tmp_path, capsys):
    """A soft cap, RoPE with LayerNorm, a modern model with biases: no architecture transformers or llama.cpp ship
    runs them, so the folder carries model.py and loads with trust_remote_code=True, with the project's logits
    and greedy text; the one line on stderr says llama.cpp cannot load it, and why."""
    for i, (kw, named) in enumerate(((dict(MODERN, logit_softcap=15.0), "logit_softcap=15.0"),
                                     (dict(pos_emb="rope"), "pos_emb='rope'"), (dict(MODERN, bias=True), "bias=True"))):
        model = tiny_model(**kw)
        capsys.readouterr()  # what loading the previous folder printed
        written, target = export(model, str(tmp_path / f"hf{i}"))
        assert target == "code" and {"model.py", "modeling_gpt2kit.py", "attention.py", "head_loss.py"} <= set(written)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "llama.cpp cannot load this model" in err[0] and named in err[0]
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"hf{i}", trust_remote_code=True,
                                                               dtype=torch.float32).eval()
        x = torch.randint(0, VOCAB_SIZE, (2, 40), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert (model(x)[0][..., :VOCAB_SIZE] - hf(x).logits).abs().max().item() < 1e-4
            assert model.generate(x[:1, :8], 10, temperature=0, sample_vocab_size=VOCAB_SIZE).tolist() == \
                hf.generate(x[:1, :8], max_new_tokens=10, do_sample=False, min_new_tokens=10).tolist()


def test_small_vocab_model_exports_without_tokenizer(tmp_path, capsys):
    model = tiny_model(vocab_size=100)
    written, _ = export(model, str(tmp_path / "hf"))
    assert "vocab.json" not in written and "tokenizer files not written" in capsys.readouterr().err
    hf = load_hf(tmp_path / "hf")
    x = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-4)


def test_existing_files_are_kept_and_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    to = tmp_path / "hf"
    to.mkdir()
    (to / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already holds files; choose an empty or new folder"):
        export(tiny_model(), str(to))
    assert os.listdir(to) == ["notes.txt"]

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device", path)
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError):
        export(tiny_model(), str(to), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["hf"] and os.listdir(to) == ["notes.txt"]  # old folder back, no stage
    with pytest.raises(OSError):
        export(tiny_model(), str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_exit_codes_follow_the_one_rule(tmp_path):
    """Usage (the destination is the wrong kind of thing, or already holds files): 2. Data (no run): 1."""
    run = lambda *a: subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), *a], capture_output=True, text=True,
                                    timeout=120)
    r = run(f"--out_dir={tmp_path / 'nope'}", f"--to={tmp_path / 'hf'}")
    assert r.returncode == 1 and r.stderr.startswith("error: out_dir") and r.stderr.count("\n") == 1
    r = run(f"--out_dir={tmp_path}")
    assert r.returncode == 2 and "--to is required" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    model = tiny_model()
    (tmp_path / "out").mkdir()
    save_checkpoint(str(tmp_path / "out" / "ckpt.pt"), {"model": model.state_dict(), "model_args": vars(model.config)})
    r = run(f"--out_dir={tmp_path / 'out'}", f"--to={tmp_path / 'full'}")
    assert r.returncode == 2 and "already holds files" in r.stderr


STUCK = """import os, sys, time
from gptlib import exports
real = os.rename
def rename(a, b):
    if a.endswith(".export-%d" % os.getpid()) and sys.argv[2] == "between_renames":
        print("stuck", flush=True)
        time.sleep(600)
    return real(a, b)
os.rename = rename
def blocked(path):
    open(path, "wb").write(b"partial")
    print("stuck", flush=True)
    time.sleep(600)
files = {"config.json": b"{}", "model.safetensors": b"x" * 1000}
if sys.argv[2] == "writing":
    files["model.safetensors"] = blocked
exports.write_folder(sys.argv[1], files, overwrite=True)
"""


@pytest.mark.parametrize("when", ["writing", "between_renames"])
def test_an_export_killed_9_is_cleaned_up_by_the_next_one(tmp_path, when, capsys):
    """kill -9 while the files are written leaves .NAME.export-PID behind; between the two renames it also leaves
    the previous export set aside as .NAME.export-PID.old, with the folder gone (issue 28). The next export to
    the folder removes the stage and puts the old folder back (then refuses to replace it without --overwrite)."""
    to = tmp_path / "hf"
    to.mkdir()
    (to / "config.json").write_text('{"old": true}')
    p = subprocess.Popen([sys.executable, "-c", STUCK, str(to), when], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "stuck"
    finally:
        p.kill()
        p.wait()
    left = sorted(n for n in os.listdir(tmp_path) if n.startswith(".hf.export-"))
    assert left == ([f".hf.export-{p.pid}"] + [f".hf.export-{p.pid}.old"] * (when == "between_renames"))
    assert to.exists() == (when == "writing")
    with pytest.raises(ExportError, match="already holds files"):
        exports.write_folder(str(to), {"config.json": b"{}"})
    err = capsys.readouterr().err
    assert f"removed {tmp_path / left[0]}, left by an export that was killed" in err
    assert ("was set aside by an export that was killed; put back" in err) == (when == "between_renames")
    assert sorted(os.listdir(tmp_path)) == ["hf"] and (to / "config.json").read_text() == '{"old": true}'
