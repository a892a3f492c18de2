"""Export a checkpoint as a Hugging Face transformers model folder that transformers, llama.cpp (through its
convert_hf_to_gguf.py), Ollama, LM Studio and lm-evaluation-harness run.

    python export.py --out_dir=out-fineweb --to=hf-fineweb                 # the run's best checkpoint
    python export.py --init_from=../nanoGPT/out/ckpt.pt --to=hf-nanogpt    # a nanoGPT run

The GPT-2 recipe becomes a GPT2LMHeadModel, the modern recipe an ApertusForCausalLM, and a model no native
architecture runs (the speedrun recipe, a soft cap) its own model.py with a wrapper that transformers loads with
trust_remote_code=True (gptlib/exports.py says why each). The folder holds config.json, model.safetensors (fp32, the 50257 real
vocabulary rows), generation_config.json, tokenizer_config.json with GPT-2's vocab.json and merges.txt, and a
README.md model card. It is written all at once: a refused or failed export leaves nothing behind.
"""
import json
import math
import os
import sys
from dataclasses import dataclass

from gptlib import checkpoint, exports, monitor, paths
from gptlib.checkpoint import init_from_problem
from gptlib.errors import run_command
from gptlib.exports import ExportError  # noqa: F401  (the error this command raises, for tests and callers)
from gptlib.settings import load_config, no_effect_notes, setting
from gptlib.shards import VOCAB_SIZE
from gptlib.train_settings import TrainConfig

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
    init_from: str = setting("resume")  # 'resume' (out_dir's checkpoint) or a checkpoint file (.pt, nanoGPT's too)
    to: str = setting("", path="dir")  # folder to write the model into (required)
    overwrite: bool = setting(False)  # replace a folder that already holds files

    def problems(self):
        out = [] if self.to else ["--to is required: the folder to write the model into"]
        return out + [p for p in [init_from_problem(self.init_from)] if p]

    def no_effect(self):
        """Settings this command ignores, setting -> why (settings.no_effect_notes)."""
        return {"out_dir": f"init_from={self.init_from!r} names the model"} if self.init_from != "resume" else {}


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


def facts_of(model, ckpt, out_dir):
    """What the model card says: recipe, tokens, data, best val loss, HellaSwag (from metrics.jsonl if measured)."""
    loop, cfg = (ckpt or {}).get("loop", {}), (ckpt or {}).get("config", {})
    facts = {"name": os.path.basename(os.path.normpath(out_dir)) or "model",
             "params": monitor.human_count(model.get_num_params()),
             "recipe": "GPT-2" if not model.config.not_gpt2() else
             ("speedrun (" if model.config.speedrun() else "modern (") + ", ".join(model.config.not_gpt2()) + ")",
             "tokens trained": monitor.human_count(loop["tokens"]) if loop.get("tokens") else None,
             "data": cfg.get("data_dir"),
             "best val loss": f"{loop['best_val']:.4f}" if math.isfinite(loop.get("best_val", math.inf)) else None}
    if ckpt and ckpt.get("imported_from"):
        facts["recipe"] += f", imported from {ckpt['imported_from']}"
    path = os.path.join(out_dir, monitor.METRICS_FILE)
    if os.path.exists(path):
        scores = [r["hellaswag/acc_norm"] for r in monitor.read_metrics(path) if "hellaswag/acc_norm" in r]
        facts["HellaSwag acc_norm"] = f"{scores[-1]:.4f}" if scores else None
    return facts


def export(model, to, overwrite=False, facts=None):
    """Write model.GPT as a transformers folder (target chosen by exports.pick_target); returns the file names."""
    from safetensors.torch import save_file
    target = exports.pick_target(model.config)
    n_vocab = min(model.config.vocab_size, VOCAB_SIZE)
    tensors = exports.state_dict_for(model, target, n_vocab)
    files = exports.code_files() if target == "code" else {}
    if target == "code":
        print(f"note: {exports.remote_code_note(model.config)}; transformers loads it with trust_remote_code=True",
              file=sys.stderr)
    files |= {
        "model.safetensors": lambda path: save_file(tensors, path, metadata={"format": "pt"}),
        "config.json": json.dumps(exports.hf_config(model.config, target, n_vocab), indent=2).encode(),
        "generation_config.json": json.dumps(exports.generation_config(), indent=2).encode(),
        "README.md": exports.model_card(target, model.config, facts or {}).encode(),
    }
    if n_vocab == VOCAB_SIZE:
        tok, why = tokenizer_files()
        if tok is None:
            print(f"note: GPT-2 tokenizer files unavailable ({why}); exported the model without them", file=sys.stderr)
        else:
            files.update(tok)
            files["tokenizer_config.json"] = json.dumps(exports.tokenizer_config(model.config.block_size), indent=2).encode()
    else:
        print(f"note: vocab_size {n_vocab} is not GPT-2's {VOCAB_SIZE}; tokenizer files not written", file=sys.stderr)
    return exports.write_folder(to, files, overwrite), target


def main(argv):
    cfg = load_config(ExportConfig, argv, foreign=TrainConfig)
    for note in no_effect_notes(cfg):
        print(note, file=sys.stderr)
    read = cfg.init_from if cfg.init_from.endswith(".pt") else cfg.out_dir if cfg.init_from == "resume" else ""
    if read and paths.inside(read, cfg.to):  # writing `to` replaces the folder: never the one being read
        raise ExportError(f"--to={cfg.to} holds what is being exported ({read}): exporting there would delete it; "
                          f"choose another folder, {paths.elsewhere(cfg.to, os.path.normpath(cfg.to) + '-hf', 'to')}")
    # a character-level model (nanoGPT's shakespeare_char) exports too, without GPT-2's tokenizer files
    model, described, ckpt = checkpoint.load_model(cfg.init_from, cfg.out_dir, gpt2_tokens=False)
    written, target = export(model, cfg.to, cfg.overwrite, facts_of(model, ckpt, cfg.out_dir))
    print(f"exported {described}, {model.get_num_params() / 1e6:.2f}M params, as {exports.TARGETS[target]['class']} "
          f"to {cfg.to}: {', '.join(written)}")


if __name__ == "__main__":
    sys.exit(run_command(main))
