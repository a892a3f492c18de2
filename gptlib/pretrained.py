"""OpenAI's GPT-2 weights from the Hugging Face hub, loaded into model.GPT without transformers.

The hub's `model.safetensors` uses the layout of transformers' GPT2Model: keys without our
`transformer.` prefix (some copies have it), `attn.bias`/`attn.masked_bias` causal-mask buffers,
and Conv1D layers whose weights are stored (in, out), the transpose of nn.Linear's (out, in).

Vocabulary: the loaded model keeps the checkpoint's 50257 rows (vocab_size=50257), so its logits
and loss are exactly OpenAI's. Padding to 50304 would add output logits that GPT-2 never learned
to suppress (its real logits are large and negative, a zero row would outrank them).
"""
import json
import logging

import torch

from model import GPT, GPTConfig

from .errors import UserError, short
from .exports import GPT2_TABLE, transpose

HUB_REPOS = {  # model name -> hub repository
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
}
GPT2_SHAPES = {  # model name -> (n_layer, n_head, n_embd), as in the repositories' config.json (for train.py --plan)
    "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}
GPT2_VOCAB, GPT2_CONTEXT = 50257, 1024
CONV1D_WEIGHTS = tuple(ours.split("{i}.")[1] for ours, _, transform in GPT2_TABLE if transform is transpose)  # stored (in, out)
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # constant causal masks in old checkpoints, not weights
HF_PREFIX = "transformer."


class PretrainedError(UserError):
    """Weights that cannot be downloaded or do not fit model.GPT, with a message that says what to do."""


def config_from_hf(hf):
    """GPTConfig from a transformers GPT-2 config.json dict; refuses variants this model cannot run."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"config.json is for model_type {hf.get('model_type')!r}; only GPT-2 ('gpt2') is supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):  # both are GELU's tanh approximation, as our MLP
        raise PretrainedError(f"config.json uses activation {act!r}; this model implements GPT-2's tanh GELU only")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise PretrainedError(f"config.json uses layer_norm_epsilon {hf['layer_norm_epsilon']}; this model uses 1e-5")
    return GPTConfig(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
                     tie_weights=hf.get("tie_word_embeddings", True))


def state_dict_from_hf(hf_sd, config):
    """Our state dict from a transformers-layout GPT-2 state dict."""
    sd = {}
    for key, t in hf_sd.items():
        if key.endswith(MASK_BUFFERS):
            continue
        if key.startswith(HF_PREFIX):
            key = key[len(HF_PREFIX):]
        if key.endswith(CONV1D_WEIGHTS):
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        sd[key if key == "lm_head.weight" else HF_PREFIX + key] = t
    if config.tie_weights:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]  # the tied head is stored once, as wte
    return sd


def _download(repo, filename, hub_kwargs):
    from huggingface_hub import hf_hub_download
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would repeat the one-line error below
    try:
        return hf_hub_download(repo, filename, **hub_kwargs)
    except Exception as e:  # offline, not cached, HTTP errors: every one needs the same advice
        raise PretrainedError(f"cannot get {filename} of {repo} from the Hugging Face hub ({short(e) or type(e).__name__}); "
                              f"check the network, or pre-download it with `hf download {repo}`") from None
    finally:
        hub_log.setLevel(level)


def load_pretrained(name, dropout=None, **hub_kwargs):
    """GPT with OpenAI's weights: name is 'gpt2', 'gpt2-medium', 'gpt2-large' or 'gpt2-xl'.
    dropout overrides the default 0.0 (for fine-tuning); hub_kwargs go to huggingface_hub.hf_hub_download
    (e.g. cache_dir, revision, local_files_only). The files are cached by huggingface_hub."""
    if name not in HUB_REPOS:
        raise PretrainedError(f"unknown pretrained model {name!r}; choose one of {', '.join(HUB_REPOS)}")
    from safetensors.torch import load_file
    repo = HUB_REPOS[name]
    with open(_download(repo, "config.json", hub_kwargs)) as f:
        config = config_from_hf(json.load(f))
    if dropout is not None:
        config.dropout = dropout
    weights_path = _download(repo, "model.safetensors", hub_kwargs)
    try:
        hf_sd = load_file(weights_path)
    except Exception as e:  # safetensors raises its own SafetensorError on a truncated or foreign file
        raise PretrainedError(f"{weights_path} is not a readable safetensors file ({short(e)}); delete it and download again") from None
    model = GPT(config)
    sd = state_dict_from_hf(hf_sd, config)
    missing = set(model.state_dict()) - set(sd)
    unexpected = set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise PretrainedError(f"{repo}'s weights do not match GPT-2's layout (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    with torch.no_grad():
        for key, p in model.state_dict().items():
            if p.shape != sd[key].shape:
                raise PretrainedError(f"{repo}: {key} has shape {tuple(sd[key].shape)}, config.json implies {tuple(p.shape)}")
            p.copy_(sd[key])
    return model
