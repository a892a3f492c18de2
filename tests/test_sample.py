import io
import pathlib
import subprocess
import sys

import pytest
import tiktoken
import torch

import sample
from gptlib.errors import ConfigError
from model import GPT, GPTConfig
from gptlib.checkpoint import save_checkpoint
from gptlib.errors import CheckpointError
from gptlib.shards import EOT

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def write_run(out_dir, name="ckpt.pt", seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    out_dir.mkdir(exist_ok=True)
    save_checkpoint(str(out_dir / name), {"model": model.state_dict(), "model_args": vars(model.config),
                                          "config": {}, "loop": {"iter_num": 7, "best_val": 9.5}})
    return model


def run(argv):
    buf = io.StringIO()
    sample.main(argv, out=buf)
    return buf.getvalue()


def test_greedy_sample_prints_the_models_continuation(tmp_path):
    write_run(tmp_path / "out", "ckpt.pt", seed=0)
    best = write_run(tmp_path / "out", "ckpt_best.pt", seed=1)  # preferred over ckpt.pt
    prompt = "To be, or not to be"
    text = run([f"--out_dir={tmp_path / 'out'}", f"--start={prompt}", "--num_samples=2", "--max_new_tokens=12",
                "--temperature=0", "--stop_at_eot=False", "--device=cpu"])
    enc = tiktoken.get_encoding("gpt2")
    ids = torch.tensor([[EOT] + enc.encode(prompt)])
    expected = enc.decode(best.generate(ids, 12, temperature=0)[0, ids.size(1):].tolist())
    assert text == (prompt + expected + f"\n{sample.SEPARATOR} 12 tokens (max_new_tokens)\n") * 2


def test_seeded_sampling_is_reproducible_and_prompt_from_file(tmp_path):
    write_run(tmp_path / "out")
    (tmp_path / "p.txt").write_text("First Citizen:\n")
    argv = [f"--out_dir={tmp_path / 'out'}", f"--start=FILE:{tmp_path / 'p.txt'}", "--num_samples=2",
            "--max_new_tokens=10", "--top_p=0.9", "--seed=5"]
    a, b = run(argv), run(argv)
    assert a == b and a.startswith("First Citizen:\n") and a.count(sample.SEPARATOR) == 2
    assert run(argv[:-1] + ["--seed=6"]) != a


def test_stream_decoder_joins_characters_split_across_tokens():
    enc = tiktoken.get_encoding("gpt2")
    text = "naïve café — 東京, 🙂 ok"
    ids = enc.encode(text)
    pieces = [enc.decode_single_token_bytes(t) for t in ids]
    split = [p for p in pieces if not _valid_utf8(p)]
    assert split, "the text should contain a character spread over several tokens"
    out = io.StringIO()
    dec = sample.StreamDecoder(enc, out)
    for t in ids:
        dec(t)
    dec.finish()
    assert out.getvalue() == text


def _valid_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sample.main([f"--out_dir={tmp_path / 'nope'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no ckpt_best.pt or ckpt.pt"):
        sample.main([f"--out_dir={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="init_from"):
        sample.main(["--init_from=gpt5"])
    with pytest.raises(ConfigError, match="prompt file"):
        sample.main([f"--start=FILE:{tmp_path / 'missing.txt'}"])


def test_script_exits_with_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(REPO_ROOT / "sample.py"), f"--out_dir={tmp_path / 'nope'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: out_dir") and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, str(REPO_ROOT / "sample.py"), "--temprature=0.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "did you mean 'temperature'" in r.stderr
