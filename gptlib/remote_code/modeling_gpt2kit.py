"""A model exported by gpt2kit's export.py with its own code: transformers' AutoModelForCausalLM runs the toolkit's
model.py (copied beside this file, with the attention and loss modules it imports) through this thin wrapper.

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

The logits are model.GPT's, cut to the tokenizer's vocabulary; generation recomputes the whole sequence each
step (no transformers KV cache: model.py's own generate() has one).
"""
import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gpt2kit import Gpt2kitConfig
from .model import GPT, GPTConfig


class Gpt2kitForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = Gpt2kitConfig
    base_model_prefix = "gpt"
    _supports_cache_class = False

    def __init__(self, config):
        super().__init__(config)
        self.gpt = GPT(GPTConfig(**config.gpt))
        self.post_init()

    def _init_weights(self, module):
        if hasattr(module, "rope_tables"):  # computed buffers, never in the weights file
            module.rope_tables()

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, vocab_size). attention_mask must be all ones (left padding would
        shift the positions); labels: the mean cross-entropy of the next token, as transformers computes it."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("this model takes no padding: pass sequences of equal length without attention_mask")
        logits = self.gpt(input_ids)[0][..., :self.config.vocab_size]  # (B, T, V)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids, "attention_mask": kwargs.get("attention_mask")}
