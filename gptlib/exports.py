"""Exports: a model.GPT as a transformers model folder, one mapping table per target architecture (issue 17).

    target   model.py settings it runs exactly                      transformers class   llama.cpp
    gpt2     learned positions, LayerNorm, GELU (tanh or exact)     GPT2LMHeadModel      yes (gpt2)
    apertus  RoPE, RMSNorm, QK-norm, ReLU^2, no biases              ApertusForCausalLM   yes (apertus)

Why Apertus for the modern recipe: it is the architecture the ecosystem already runs whose every piece is
ours or expresses ours exactly. Its MLP is not gated, its QK-norm is per head, its rotary embedding is the
half-split one (transformers' rotate_half, as model.Rotary), and its xIELU activation with alpha_p = 0.5413...
(softplus gives exactly 1.0 in fp32), alpha_n = -200 (softplus underflows to 0), beta = 0 is x^2 for x > 0 and 0
below: ReLU^2. A prototype measured 4.3e-6 max logit difference in transformers and 5.7e-6 in llama.cpp
(f32 KV cache), greedy text identical. Qwen3 is also exact in transformers (its gated MLP with gate = up =
c_fc and hidden_act='relu' is relu(a)*a = relu(a)^2), but llama.cpp's qwen3 graph hardcodes SiLU and ignores
hidden_act (1.67 max logit difference, other greedy text), so it is not offered.
    code     anything model.py runs (the speedrun switches, logit_softcap, a mix such as RoPE with LayerNorm):
             model.py itself, with the modules it imports, and a thin wrapper, loaded by transformers'
             AutoModelForCausalLM with trust_remote_code=True (gptlib/remote_code/); llama.cpp cannot load it
A model goes to the first target that runs it exactly, so a model gpt2 or apertus runs never needs remote code.

A mapping table is a list of (our key, its key or keys, transform); '{i}' stands for the layer index.
"""
import glob
import math
import os
import re
import shutil
import sys

import torch

from model import SPEEDRUN_KEYS, GPTConfig

from .errors import ConfigError, UserError
from .shards import EOT

FP32_EPS = torch.finfo(torch.float32).eps  # nn.RMSNorm(eps=None) and F.rms_norm use it: 1.1920928955078125e-07
XIELU_AS_RELU2 = {"alpha_p": math.log(math.expm1(1.0)), "alpha_n": -200.0, "beta": 0.0, "eps": -1e-6}  # see above


class ExportError(ConfigError):
    """A model or destination that cannot be exported, with what to do about it (exit 2: a usage mistake)."""


# ----------------------------------------------------------------------------- transforms

def _rows(t, n_vocab):
    return t[:n_vocab]  # the real vocabulary rows; the padding rows are never used


def transpose(t, n_vocab):
    return t.t()  # Linear (out, in) <-> GPT-2's Conv1D (in, out)


def _split3(t, n_vocab):
    return t.chunk(3, dim=0)  # c_attn's (3C, C) weight -> q, k, v (C, C) each


GPT2_TABLE = [
    ("transformer.wte.weight", "transformer.wte.weight", _rows),
    ("transformer.wpe.weight", "transformer.wpe.weight", None),
    ("transformer.h.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight", None),
    ("transformer.h.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", None),
    ("transformer.h.{i}.attn.c_attn.weight", "transformer.h.{i}.attn.c_attn.weight", transpose),
    ("transformer.h.{i}.attn.c_attn.bias", "transformer.h.{i}.attn.c_attn.bias", None),
    ("transformer.h.{i}.attn.c_proj.weight", "transformer.h.{i}.attn.c_proj.weight", transpose),
    ("transformer.h.{i}.attn.c_proj.bias", "transformer.h.{i}.attn.c_proj.bias", None),
    ("transformer.h.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight", None),
    ("transformer.h.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", None),
    ("transformer.h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_fc.weight", transpose),
    ("transformer.h.{i}.mlp.c_fc.bias", "transformer.h.{i}.mlp.c_fc.bias", None),
    ("transformer.h.{i}.mlp.c_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", transpose),
    ("transformer.h.{i}.mlp.c_proj.bias", "transformer.h.{i}.mlp.c_proj.bias", None),
    ("transformer.ln_f.weight", "transformer.ln_f.weight", None),
    ("transformer.ln_f.bias", "transformer.ln_f.bias", None),
    ("lm_head.weight", "lm_head.weight", _rows),  # untied heads only: transformers re-ties a tied one
]

APERTUS_TABLE = [
    ("transformer.wte.weight", "model.embed_tokens.weight", _rows),
    ("transformer.h.{i}.ln_1.weight", "model.layers.{i}.attention_layernorm.weight", None),
    ("transformer.h.{i}.attn.c_attn.weight", ("model.layers.{i}.self_attn.q_proj.weight",
                                              "model.layers.{i}.self_attn.k_proj.weight",
                                              "model.layers.{i}.self_attn.v_proj.weight"), _split3),
    ("transformer.h.{i}.attn.c_proj.weight", "model.layers.{i}.self_attn.o_proj.weight", None),
    ("transformer.h.{i}.ln_2.weight", "model.layers.{i}.feedforward_layernorm.weight", None),
    ("transformer.h.{i}.mlp.c_fc.weight", "model.layers.{i}.mlp.up_proj.weight", None),
    ("transformer.h.{i}.mlp.c_proj.weight", "model.layers.{i}.mlp.down_proj.weight", None),
    ("transformer.ln_f.weight", "model.norm.weight", None),
    ("lm_head.weight", "lm_head.weight", _rows),
]


# ----------------------------------------------------------------------------- targets

def _gpt2_config(c, n_vocab):
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": n_vocab,
        "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": None,  # None: 4 * n_embd, as model.MLP
        # 'gelu_new' is GELU's tanh approximation (GPT-2, model.py's 'gelu'); 'gelu' is exact (nanoGPT's nn.GELU)
        "activation_function": "gelu" if c.mlp_act == "gelu_exact" else "gelu_new",
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default, used by model.py
        "initializer_range": 0.02, "tie_word_embeddings": c.tie_weights,
    }


def _gpt2_extras(c, n_vocab):
    """bias=False models: a LayerNorm or Linear without bias computes the same as one with a zero bias."""
    if c.bias:
        return {}
    out = {}
    for i in range(c.n_layer):
        for name, width in (("ln_1", c.n_embd), ("ln_2", c.n_embd), ("attn.c_attn", 3 * c.n_embd),
                            ("attn.c_proj", c.n_embd), ("mlp.c_fc", 4 * c.n_embd), ("mlp.c_proj", c.n_embd)):
            out[f"transformer.h.{i}.{name}.bias"] = torch.zeros(width)
    out["transformer.ln_f.bias"] = torch.zeros(c.n_embd)
    return out


def _apertus_config(c, n_vocab):
    return {
        "architectures": ["ApertusForCausalLM"], "model_type": "apertus", "vocab_size": n_vocab,
        "hidden_size": c.n_embd, "intermediate_size": 4 * c.n_embd, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "head_dim": c.n_embd // c.n_head,
        "hidden_act": "xielu", "max_position_embeddings": c.block_size, "initializer_range": 0.02,
        "rms_norm_eps": FP32_EPS,  # with Apertus' default 1e-5 the logits move by ~3e-3
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},  # transformers >= 5
        "rope_theta": c.rope_base, "rope_scaling": None,  # the same for transformers 4.x
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": c.tie_weights,
    }


def _apertus_extras(c, n_vocab):
    """Per layer: the weightless QK-norm as RMSNorm weights of ones, and xIELU set to ReLU^2."""
    out = {}
    hs = c.n_embd // c.n_head
    for i in range(c.n_layer):
        out[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.ones(hs)
        out[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.ones(hs)
        for name, v in XIELU_AS_RELU2.items():
            out[f"model.layers.{i}.mlp.act_fn.{name}"] = torch.tensor([v] if name.startswith("alpha") else v)
    return out


CODE_TABLE = [("", "gpt.", None)]  # every tensor of model.GPT's state_dict, under the wrapper's attribute `gpt`
REMOTE_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_code")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_FILES = {  # exported name -> the project file it is (model.py's imports from gptlib become relative ones)
    "configuration_gpt2kit.py": os.path.join(REMOTE_CODE, "configuration_gpt2kit.py"),
    "modeling_gpt2kit.py": os.path.join(REMOTE_CODE, "modeling_gpt2kit.py"),
    "model.py": os.path.join(REPO, "model.py"),
    "attention.py": os.path.join(REPO, "gptlib", "attention.py"),
    "head_loss.py": os.path.join(REPO, "gptlib", "head_loss.py"),
}
NO_GGUF = ("llama.cpp cannot load this model (no GGUF architecture has its {what}): for GGUF, train with "
           "config/recipe_modern.py, which exports as ApertusForCausalLM")


def _code_config(c, n_vocab):
    import dataclasses
    return {"architectures": ["Gpt2kitForCausalLM"], "model_type": "gpt2kit", "vocab_size": n_vocab,
            "auto_map": {"AutoConfig": "configuration_gpt2kit.Gpt2kitConfig",
                         "AutoModelForCausalLM": "modeling_gpt2kit.Gpt2kitForCausalLM"},
            "gpt": dataclasses.asdict(c), "max_position_embeddings": c.block_size, "use_cache": False,
            "tie_word_embeddings": False}  # the wrapper's own tie (model.GPT's) is in its code


def code_files():
    """{exported name: bytes} of the modeling code: the project's files, their gptlib imports made relative."""
    out = {}
    for name, path in CODE_FILES.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        out[name] = text.replace("\nfrom gptlib.", "\nfrom .").encode()
    return out


NO_SPEEDRUN = {k: (getattr(GPTConfig(), k),) for k in SPEEDRUN_KEYS}  # no native architecture has these
TARGETS = {  # name -> what it needs of model.GPTConfig, its table, config and extra tensors
    "gpt2": {"needs": {"pos_emb": ("learned",), "norm": ("layernorm",), "qk_norm": (False,),
                       "mlp_act": ("gelu", "gelu_exact"), "logit_softcap": (0.0,), **NO_SPEEDRUN},
             "table": GPT2_TABLE, "config": _gpt2_config, "extras": _gpt2_extras, "class": "GPT2LMHeadModel"},
    "apertus": {"needs": {"pos_emb": ("rope",), "norm": ("rmsnorm",), "qk_norm": (True,), "mlp_act": ("relu2",),
                          "bias": (False,), "logit_softcap": (0.0,), **NO_SPEEDRUN},
                "table": APERTUS_TABLE, "config": _apertus_config, "extras": _apertus_extras,
                "class": "ApertusForCausalLM"},
    "code": {"needs": {}, "table": CODE_TABLE, "config": _code_config, "extras": lambda c, n: {},
             "class": "Gpt2kitForCausalLM (trust_remote_code=True)"},
}


def _misses(config, name):
    """The settings of config that target `name` cannot express, as 'key=value' strings."""
    return [f"{k}={getattr(config, k)!r}" for k, ok in TARGETS[name]["needs"].items() if getattr(config, k) not in ok]


def pick_target(config):
    """The first target that runs this model exactly ('code' runs every model)."""
    return next(name for name in TARGETS if not _misses(config, name))


def remote_code_note(config):
    """One line for a model that only its own code runs: what llama.cpp lacks for it, and what to do instead."""
    nearest = min((n for n in TARGETS if n != "code"), key=lambda n: len(_misses(config, n)))
    return NO_GGUF.format(what=", ".join(_misses(config, nearest)))


def state_dict_for(model, target, n_vocab):
    """The target's tensors (contiguous, fp32 as trained) from model.GPT, through its mapping table."""
    c, sd = model.config, model.state_dict()
    if target == "code":  # model.py's own names and shapes, all rows (its code cuts the logits to n_vocab)
        prefix = CODE_TABLE[0][1]
        return {prefix + k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.clone()
                for k, v in sd.items()}
    out = {}
    for ours, theirs, transform in TARGETS[target]["table"]:
        for i in range(c.n_layer) if "{i}" in ours else [None]:
            key = ours.format(i=i)
            if key not in sd or (key == "lm_head.weight" and target == "gpt2" and c.tie_weights):
                continue
            value = transform(sd[key], n_vocab) if transform else sd[key]
            names = theirs if isinstance(theirs, tuple) else (theirs,)
            values = value if isinstance(theirs, tuple) else (value,)
            for name, v in zip(names, values):
                out[name.format(i=i)] = v.detach().float().contiguous().clone()
    out.update(TARGETS[target]["extras"](c, n_vocab))
    return out


def hf_config(config, target, n_vocab):
    return {**TARGETS[target]["config"](config, n_vocab), "bos_token_id": EOT, "eos_token_id": EOT,
            "pad_token_id": EOT, "torch_dtype": "float32", "dtype": "float32"}


# ----------------------------------------------------------------------------- the files beside the weights

def tokenizer_config(block_size):
    """GPT-2's BPE: without this file AutoTokenizer guesses from the model type (Qwen2's for a Qwen3 folder)."""
    return {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "add_prefix_space": False, "clean_up_tokenization_spaces": False}


def generation_config():
    return {"bos_token_id": EOT, "eos_token_id": EOT, "pad_token_id": EOT}


def model_card(target, config, facts):
    """README.md: what the model is, what it was trained on and to what loss, and how to run it."""
    lines = [f"# {facts.get('name', 'model')}", "",
             f"A {facts.get('params', '?')}-parameter GPT trained from scratch ({facts.get('recipe', '?')} recipe), "
             f"exported as "
             f"`{TARGETS[target]['class']}`: {config.n_layer} layers, {config.n_embd} wide, {config.n_head} heads, "
             f"context {config.block_size}, GPT-2's tokenizer.", "",
             "| | |", "|---|---|"]
    for k in ("tokens trained", "data", "best val loss", "HellaSwag acc_norm", "checkpoint"):
        if facts.get(k) is not None:
            lines.append(f"| {k} | {facts[k]} |")
    lines += ["", "transformers:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained('THIS_FOLDER')",
              "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER'"
              + (", trust_remote_code=True)" if target == "code" else ")"),
              "out = model.generate(**tok('Hello', return_tensors='pt'), max_new_tokens=40)",
              "print(tok.decode(out[0]))", "```", ""]
    if target == "code":
        return "\n".join(lines + [remote_code_note(config) + ".", ""])
    lines += ["llama.cpp (its converter needs `pip install sentencepiece gguf`):", "", "```",
              "python llama.cpp/convert_hf_to_gguf.py THIS_FOLDER --outfile model-f16.gguf --outtype f16",
              "llama-cli -m model-f16.gguf -p 'Hello' -n 40", "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writing

def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid):
    if pid == os.getpid():  # this process exports one folder at a time: its own leftover is stale too
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_stale_stages(to):
    """A kill -9 during an export leaves its staging folder (.NAME.export-PID, as large as the model) and, if it
    struck between the two renames, the previous folder set aside as .NAME.export-PID.old with `to` gone (issue 28).
    Once the process that made them is dead, an export to the same folder removes the first and puts the second
    back where it was; each said in one note."""
    parent, base = os.path.split(os.path.abspath(to))
    prefix = os.path.join(parent, f".{base}.export-")
    for path in sorted(glob.glob(glob.escape(prefix) + "*")):
        m = re.fullmatch(r"(\d+)(\.old)?", path[len(prefix):])
        if not m or _alive(int(m.group(1))):
            continue
        if m.group(2) and not os.path.exists(to):
            os.rename(path, to)
            print(f"note: {to} was set aside by an export that was killed; put back", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
            print(f"note: removed {path}, left by an export that was killed", file=sys.stderr)


def write_folder(to, files, overwrite=False):
    """Write {name: bytes or callable(path)} as the folder `to`, all or nothing: everything goes into a
    staging folder beside it, which then takes its place. Files get ordinary permissions (0666 minus the
    umask: safetensors alone would make model.safetensors 0600). A failure leaves `to` as it was."""
    clear_stale_stages(to)
    if os.path.isdir(to) and os.listdir(to) and not overwrite:
        raise ExportError(f"{to} already holds files; choose an empty or new folder")
    parent = os.path.dirname(os.path.abspath(to)) or "."
    stage = os.path.join(parent, f".{os.path.basename(os.path.abspath(to))}.export-{os.getpid()}")
    mode = 0o666 & ~_umask()
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(stage)
        for name, data in files.items():
            path = os.path.join(stage, name)
            if callable(data):
                data(path)
            else:
                with open(path, "wb") as f:
                    f.write(data)
            os.chmod(path, mode)
        os.chmod(stage, 0o777 & ~_umask())
        old = None
        if os.path.isdir(to):  # empty, or --overwrite: set it aside until the new one is in place
            old = stage + ".old"
            os.rename(to, old)
        os.rename(stage, to)
        if old:
            shutil.rmtree(old)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if not os.path.exists(to) and os.path.isdir(stage + ".old"):
            os.rename(stage + ".old", to)
        if not isinstance(e, OSError) and "No space left on device" in str(e):  # safetensors' own error type
            raise UserError(f"disk full while writing {to} (nothing was written): free space in {parent} or "
                            f"choose a --to on another disk") from None
        raise
    return sorted(files)
