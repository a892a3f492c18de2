"""The llama.cpp route, verified (issue 17): export a run, convert it with llama.cpp's own convert_hf_to_gguf.py
(f32 and f16), load each GGUF with llama-cpp-python, and compare with the project's model: the largest logit
difference over a prompt, and 20 greedy tokens.

    pip install llama-cpp-python gguf sentencepiece          # builds llama.cpp (about 11 min on 2 cores)
    python -m benchmarks.check_llamacpp --out_dir=out-tiny --converter=PATH/llama.cpp/convert_hf_to_gguf.py

Prints one line per GGUF and a JSON line. Exits 0 with a line saying why when llama_cpp or the converter is
missing (it is not part of the test suite's requirements).
"""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from gptlib import checkpoint, exports, runtime
from gptlib.errors import run_command
from gptlib.settings import load_config, setting
from gptlib.shards import EOT, VOCAB_SIZE, gpt2_encoding

PROMPT = "The king said to the people of the city that"  # a prompt both tokenizers split the same way


@dataclass
class LlamaCheckConfig:
    out_dir: str = setting("out-tiny")  # the run to check (ckpt_best.pt, else ckpt.pt)
    init_from: str = setting("resume")  # or a checkpoint file (.pt, nanoGPT's too)
    converter: str = setting("")  # llama.cpp's convert_hf_to_gguf.py ('': look in llama_cpp's vendored sources)
    new_tokens: int = setting(20, ge=1)  # greedy tokens compared
    keep: str = setting("")  # keep the exported folder and GGUFs here ('': a temporary folder)


def find_converter(given):
    if given:
        return given if os.path.exists(given) else None
    for root in sys.path:
        path = os.path.join(root, "vendor", "llama.cpp", "convert_hf_to_gguf.py")
        if os.path.exists(path):
            return path
    return None


def llama_logits_and_greedy(gguf, ids, n_ctx, new_tokens, f32_cache):
    """f32_cache: keep llama.cpp's KV cache in f32 (its default f16 cache alone moves the logits by ~1e-3)."""
    import llama_cpp
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=os.cpu_count(),
                          **cache)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float64)  # (T, vocab)
    out = list(ids)
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return logits, out[len(ids):]


def main(argv):
    cfg = load_config(LlamaCheckConfig, argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp is not installed (pip install llama-cpp-python gguf sentencepiece); nothing checked")
        return 0
    converter = find_converter(cfg.converter)
    if converter is None:
        print("llama.cpp's convert_hf_to_gguf.py was not found; pass --converter=PATH; nothing checked")
        return 0
    model, described, _ = checkpoint.load_model(cfg.init_from, cfg.out_dir)
    model.eval()
    import export
    folder = cfg.keep or tempfile.mkdtemp(prefix="llamacpp-check-")
    hf = os.path.join(folder, "hf")
    _, target = export.export(model, hf, overwrite=True)
    ids = [EOT] + gpt2_encoding().encode_ordinary(PROMPT)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0, :, :VOCAB_SIZE].double().numpy()
        greedy = model.generate(torch.tensor([ids]), cfg.new_tokens, temperature=0,
                                sample_vocab_size=VOCAB_SIZE)[0, len(ids):].tolist()
    results = {"checkpoint": described, "target": exports.TARGETS[target]["class"], "prompt_tokens": len(ids),
               "llama_cpp": llama_cpp.__version__, "machine": runtime.cpu_name(), "ggufs": {}}
    for outtype in ("f32", "f16"):
        gguf = os.path.join(folder, f"model-{outtype}.gguf")
        r = subprocess.run([sys.executable, converter, hf, "--outfile", gguf, "--outtype", outtype],
                           capture_output=True, text=True)
        if r.returncode:
            results["ggufs"][outtype] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
            print(f"{outtype}: convert_hf_to_gguf.py failed: {results['ggufs'][outtype]['error']}")
            continue
        logits, theirs = llama_logits_and_greedy(gguf, ids, model.config.block_size, cfg.new_tokens, outtype == "f32")
        diff = float(np.abs(logits - ours).max())
        same = theirs == greedy
        results["ggufs"][outtype] = {"max_logit_diff": diff, "greedy_identical": same}
        print(f"{outtype}: max logit difference {diff:.2e} over {len(ids)} positions; {cfg.new_tokens} greedy tokens "
              f"{'identical' if same else 'DIFFER'} ({gpt2_encoding().decode(theirs)!r})")
    print(json.dumps(results))
    return 0 if all(g.get("greedy_identical") for g in results["ggufs"].values()) else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
