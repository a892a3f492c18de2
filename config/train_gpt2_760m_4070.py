"""GPT-2 large's width at 24 layers (759M: 24 layers, 1536 wide, 16 heads, as GPT-3 Large) on FineWeb on one 12 GB
RTX 4070 (issue 27): config/train_gpt2_760m_3090.py's model, schedule and rate with the options that make it fit 12 GB.

tokens/step: 2 x 1024 x 256 accumulation steps = 524,288
total: 28,946 steps x 524,288 = 15.2B tokens = 20 tokens/param: Chinchilla-optimal
memory (train.py --plan, gptlib/memory.py): at micro-batch 2 in bf16 with selective activation checkpointing and
torchao's 8-bit AdamW states, weights 2.83 + gradients 2.83 + AdamW 1.44 + activations 2.80 = 9.89 GiB planned
(fp32 states: 14.1; micro-batch 4 with full checkpointing instead: 8.5). ARITHMETIC ONLY, not measured on a GPU:
confirm with `python bench.py config/train_gpt2_760m_4070.py --find_batch_size --memory_gib=12` (needs torchao).
The 8-bit states against fp32 on the CPU yardstick: BENCHMARKS.md "Memory options". Checkpoints keep the 8-bit
states as they are (4.6 GB each).
"""
out_dir = "out-gpt2-760m-4070"
n_layer = 24
n_embd = 1536
n_head = 16
batch_size = 2  # 9.89 GiB planned on a 12 GiB card (see above); 256 accumulation steps
activation_checkpointing = "selective"  # keeps the matmul outputs, recomputes the pointwise work
adamw_states = "8bit"  # torchao's block-quantized AdamW moments: 1.44 GiB instead of 5.65
learning_rate = 2.5e-4  # GPT-3 Large's
min_lr = 2.5e-5
max_iters = 28_946  # 20 tokens per parameter at 524,288 tokens a step
keep_last_n = 1  # also keep the latest numbered step checkpoint (4.6 GB each)
memory_gib = 12  # the card: train.py stops at the start, in one line, if the plan does not fit
