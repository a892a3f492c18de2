"""The configuration of a model exported by gpt2kit's export.py with its own code (transformers' trust_remote_code).

Written by the toolkit's export.py beside model.py, a copy of the toolkit's model file; `gpt` holds that model's
GPTConfig fields, which say everything about the architecture.
"""
from transformers import PretrainedConfig


class Gpt2kitConfig(PretrainedConfig):
    model_type = "gpt2kit"

    def __init__(self, gpt=None, **kwargs):
        self.gpt = dict(gpt or {})  # model.GPTConfig's fields
        # the standard names transformers reads of every config (its generation and layer bookkeeping)
        self.num_hidden_layers = self.gpt.get("n_layer", 1)
        self.hidden_size = self.gpt.get("n_embd", 1)
        self.num_attention_heads = self.gpt.get("n_head", 1)
        self.max_position_embeddings = self.gpt.get("block_size", 1)
        kwargs.setdefault("use_cache", False)  # the model recomputes the whole sequence: no transformers cache
        super().__init__(**kwargs)
