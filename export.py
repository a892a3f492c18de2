"""Export a checkpoint as a Hugging Face transformers GPT2LMHeadModel folder.

    python export.py --out_dir=out-fineweb --to=hf-gpt2-fineweb

writes config.json, model.safetensors and, when tiktoken's GPT-2 files can be had, the
tokenizer (vocab.json, merges.txt). Load it with
    transformers.GPT2LMHeadModel.from_pretrained('hf-gpt2-fineweb')
Only the 50257 real vocabulary rows are exported (the padding rows are never used).
bias=False models are exported exactly, with zero biases (GPT-2 in transformers always has them);
untied heads are exported with tie_word_embeddings=false.
"""
import json
import os
import sys
from dataclasses import dataclass

from gptlib.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlib.errors import UserError, run_command
from gptlib.pretrained import state_dict_to_hf
from gptlib.settings import load_config, setting
from gptlib.train_settings import TrainConfig
from gptlib.shards import EOT, VOCAB_SIZE

# tiktoken's gpt2 encoding is built from OpenAI's original tokenizer files (tiktoken_ext/openai_public.py);
# they are exactly transformers' vocab.json (encoder.json) and merges.txt (vocab.bpe)
GPT2_TOKENIZER_FILES = {  # exported name -> (source URL, sha256 that tiktoken checks)
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


@dataclass
class ExportConfig:
    out_dir: str = setting(TrainConfig.out_dir)  # training output directory: exports ckpt_best.pt if present, else ckpt.pt; a train config file sets it
    to: str = setting("", path="dir")  # folder to write the transformers model into (required)
    overwrite: bool = setting(False)  # allow writing into a folder that already holds files

    def problems(self):
        return [] if self.to else ["--to is required: the folder to write the transformers model into"]


class ExportError(UserError):
    """A model or destination that cannot be exported, with what to do about it."""


def hf_config(config, n_vocab):
    """transformers GPT2Config fields for model.GPTConfig `config`."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": n_vocab,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # None: 4 * n_embd, as model.MLP
        "activation_function": "gelu_new",  # GELU's tanh approximation, as model.MLP
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default, used by model.py
        "initializer_range": 0.02,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "tie_word_embeddings": config.tie_weights,
        "torch_dtype": "float32",
    }


def hf_state_dict(model, n_vocab):
    """transformers GPT2LMHeadModel tensors: the first n_vocab vocabulary rows, explicit zero biases if bias=False."""
    sd = state_dict_to_hf(model)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in sd:
            sd[key] = sd[key][:n_vocab].clone()
    if not model.config.bias:
        # a LayerNorm or Linear without bias computes the same as one with a zero bias
        for key, t in list(sd.items()):
            if key.endswith((".ln_1.weight", ".ln_2.weight", "ln_f.weight", ".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                out_features = t.shape[0] if t.dim() == 1 else t.shape[1]  # Conv1D weights are (in, out)
                sd[key[:-len("weight")] + "bias"] = t.new_zeros(out_features)
    return sd


def tokenizer_files():
    """({name: bytes} of vocab.json and merges.txt, '') from tiktoken's cache (downloaded as tiktoken
    would), or (None, reason) when they cannot be had."""
    try:
        import tiktoken
        from tiktoken.load import read_file_cached
        tiktoken.get_encoding("gpt2")  # fetches both files into tiktoken's cache if they are not there yet
        return {name: read_file_cached(url, sha) for name, (url, sha) in GPT2_TOKENIZER_FILES.items()}, ""
    except Exception as e:  # offline without a cache: the model is still useful without tokenizer files
        return None, (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def export(model, to, overwrite=False):
    """Write `model` (model.GPT) as a transformers GPT2LMHeadModel folder; returns the files written."""
    from safetensors.torch import save_file
    if model.config.not_gpt2():
        raise ExportError(f"this model is not GPT-2 ({', '.join(model.config.not_gpt2())}: the modern recipe), so "
                          f"transformers' GPT2LMHeadModel cannot run it; sample.py and eval.py work on it directly")
    if os.path.isdir(to) and os.listdir(to) and not overwrite:
        raise ExportError(f"{to} already holds files; choose an empty folder or pass --overwrite=True")
    n_vocab = min(model.config.vocab_size, VOCAB_SIZE)
    os.makedirs(to, exist_ok=True)
    written = []
    weights = os.path.join(to, "model.safetensors")
    save_file(hf_state_dict(model, n_vocab), weights + ".tmp", metadata={"format": "pt"})
    os.replace(weights + ".tmp", weights)
    written.append("model.safetensors")
    write_atomic(os.path.join(to, "config.json"), json.dumps(hf_config(model.config, n_vocab), indent=2).encode())
    written.append("config.json")
    if n_vocab != VOCAB_SIZE:
        print(f"note: vocab_size {n_vocab} is not GPT-2's {VOCAB_SIZE}; tokenizer files not written", file=sys.stderr)
        return written
    files, why = tokenizer_files()
    if files is None:
        print(f"note: GPT-2 tokenizer files unavailable ({why}); exported the model without them", file=sys.stderr)
        return written
    for name, data in files.items():
        write_atomic(os.path.join(to, name), data)
        written.append(name)
    return written


def main(argv):
    cfg = load_config(ExportConfig, argv, foreign=TrainConfig)
    path = find_checkpoint(cfg.out_dir)
    model = model_from_checkpoint(load_checkpoint(path))
    written = export(model, cfg.to, cfg.overwrite)
    print(f"exported {path} ({model.get_num_params() / 1e6:.2f}M params) to {cfg.to}: {', '.join(written)}")


if __name__ == "__main__":
    sys.exit(run_command(main))
