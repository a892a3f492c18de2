"""GPT-2 medium's shape (355M: 24 layers, 1024 wide, 16 heads) on FineWeb on one 12 GB RTX 4070 (issue 27).

tokens/step: 4 x 1024 x 128 accumulation steps = 524,288 (as the 124M configs)
total: 13,538 steps x 524,288 = 7.10B tokens = 20 tokens/param: Chinchilla-optimal (Hoffmann et al. 2022)
memory (train.py --plan --memory_gib=12, arithmetic of gptlib/memory.py): at micro-batch 4 in bf16, weights 1.32 +
gradients 1.32 + AdamW 2.64 + activations 4.3 = 9.6 GiB planned, without activation checkpointing; micro-batch 8
needs 13.2 (11.2 with --activation_checkpointing=selective, 6.7 with full). The planner was within -2% to +4% of CPU
measurements in each mode (BENCHMARKS.md "Memory options"); not yet measured on a GPU:
confirm with `python bench.py config/train_gpt2_350m_4070.py --find_batch_size --memory_gib=12`.
Learning rate: GPT-3 Medium's 3e-4 (Brown et al. 2020, table 2.1), cosine to a tenth.
"""
out_dir = "out-gpt2-350m"
n_layer = 24
n_embd = 1024
n_head = 16
batch_size = 4  # 9.6 GiB planned on a 12 GiB card (see above); 128 accumulation steps
activation_checkpointing = "none"  # not needed at micro-batch 4
learning_rate = 3e-4
min_lr = 3e-5
max_iters = 13_538  # 20 tokens per parameter at 524,288 tokens a step
memory_gib = 12  # the card: train.py stops at the start, in one line, if the plan does not fit
keep_last_n = 2  # also keep the two latest numbered step checkpoints (4.3 GB each)
