"""pretrained.py against GPT-2 checkpoints in the hub's on-disk cache layout, offline,
through the real huggingface_hub download code."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from model import GPT, GPTConfig
from gptlib.pretrained import CONV1D_WEIGHTS, PretrainedError, load_pretrained

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY_HF = dict(model_type="gpt2", vocab_size=50257, n_positions=64, n_ctx=64, n_embd=32, n_layer=2, n_head=2,
               activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True)


def put_in_hub_cache(cache, repo, files):
    """Lay files out as huggingface_hub does: blobs named by hash, snapshot symlinks, refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / COMMIT).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest).write_bytes(data)
        os.symlink(f"../../blobs/{digest}", root / "snapshots" / COMMIT / name)


def openai_layout(model):
    """Our weights as OpenAI's hub file stores them: no prefix, Conv1D transposes, mask buffers, no lm_head."""
    out = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.endswith(CONV1D_WEIGHTS):
            t = t.t()
        out[key.removeprefix("transformer.")] = t.contiguous().clone()
    T = model.config.block_size
    for i in range(model.config.n_layer):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def safetensors_bytes(sd, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def test_offline_hub_cache_load_matches_source_model(tmp_path):
    torch.manual_seed(0)
    source = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "openai-community/gpt2", {
        "config.json": json.dumps(TINY_HF).encode(),
        "model.safetensors": safetensors_bytes(openai_layout(source), tmp_path)})
    x = torch.randint(0, 50257, (2, 20))
    torch.save(x, tmp_path / "x.pt")
    # a fresh interpreter, so huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE at import as in real use
    script = ("import sys, torch; from gptlib.pretrained import load_pretrained\n"
              "m = load_pretrained('gpt2').eval()\n"
              "x = torch.load(sys.argv[1])\n"
              "torch.save({'logits': m(x)[0], 'cfg': vars(m.config)}, sys.argv[2])\n")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
                       env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    out = torch.load(tmp_path / "out.pt")
    assert out["cfg"]["vocab_size"] == 50257 and out["cfg"]["block_size"] == 64
    assert torch.allclose(out["logits"], source(x)[0], atol=1e-5)


def test_transformers_saved_checkpoint_matches_transformers_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{k: v for k, v in TINY_HF.items() if k != "model_type"})
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "saved", safe_serialization=True)  # keys carry the 'transformer.' prefix
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "openai-community/gpt2-medium", {
        name: (tmp_path / "saved" / name).read_bytes() for name in ("config.json", "model.safetensors")})
    model = load_pretrained("gpt2-medium", dropout=0.1, cache_dir=str(cache), local_files_only=True).eval()
    assert model.config.dropout == 0.1
    x = torch.randint(0, 50257, (2, 30))
    with torch.no_grad():
        ref = hf(x).logits
    assert torch.allclose(model(x)[0], ref, atol=1e-4)


def test_not_cached_offline_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="cannot get config.json of openai-community/gpt2-xl"):
        load_pretrained("gpt2-xl", cache_dir=str(tmp_path), local_files_only=True)


def test_unknown_name_and_foreign_config(tmp_path):
    with pytest.raises(PretrainedError, match="choose one of gpt2, gpt2-medium"):
        load_pretrained("gpt3")
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "openai-community/gpt2", {
        "config.json": json.dumps(dict(TINY_HF, activation_function="relu")).encode()})
    with pytest.raises(PretrainedError, match="activation 'relu'"):
        load_pretrained("gpt2", cache_dir=str(cache), local_files_only=True)
