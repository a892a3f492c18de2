import os
import pathlib
import subprocess
import sys

import pytest
import tiktoken
import torch

from export import ExportError, export
from model import GPT, GPTConfig
from gptlib.checkpoint import save_checkpoint
from gptlib.shards import VOCAB_SIZE

transformers = pytest.importorskip("transformers")
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_model(seed=0, **kw):
    args = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    args.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**args)).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so a dropped parameter would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_same_logits(model, folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    x = torch.randint(0, VOCAB_SIZE, (2, 40))
    with torch.no_grad():
        ours = model(x)[0][..., :VOCAB_SIZE]
        theirs = hf(x).logits
    assert theirs.shape == (2, 40, VOCAB_SIZE)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_export_script_round_trip_with_tokenizer(tmp_path):
    model = tiny_model()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    save_checkpoint(str(out_dir / "ckpt.pt"), {"model": model.state_dict(), "model_args": vars(model.config),
                                               "config": {}, "iter_num": 10, "best_val_loss": 5.0})
    to = tmp_path / "hf"
    r = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), f"--out_dir={out_dir}", f"--to={to}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(to)) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert_same_logits(model, to)
    tok = transformers.GPT2TokenizerFast.from_pretrained(to)
    text = "Hello world, naïve café — 東京 <code>x += 1</code>"
    assert tok(text)["input_ids"] == tiktoken.get_encoding("gpt2").encode_ordinary(text)


@pytest.mark.parametrize("tie,bias", [(False, True), (True, False), (False, False)])
def test_untied_and_biasless_variants_export_exactly(tmp_path, tie, bias):
    model = tiny_model(seed=1, tie_weights=tie, bias=bias)
    export(model, str(tmp_path / "hf"))
    assert_same_logits(model, tmp_path / "hf")


def test_small_vocab_model_exports_without_tokenizer(tmp_path, capsys):
    model = tiny_model(vocab_size=100)
    written = export(model, str(tmp_path / "hf"))
    assert "vocab.json" not in written and "tokenizer files not written" in capsys.readouterr().err
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-4)


def test_existing_files_are_not_clobbered(tmp_path):
    to = tmp_path / "hf"
    to.mkdir()
    (to / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="--overwrite=True"):
        export(tiny_model(), str(to))
    assert (to / "notes.txt").read_text() == "keep me" and len(os.listdir(to)) == 1


def test_missing_out_dir_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), f"--out_dir={tmp_path / 'nope'}",
                        f"--to={tmp_path / 'hf'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("error: out_dir") and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), f"--out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--to is required" in r.stderr
