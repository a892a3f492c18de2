"""GPT-2 large's width at 24 layers (759M: 24 layers, 1536 wide, 16 heads, as GPT-3 Large) on FineWeb on one 24 GB
RTX 3090 (issue 27).

tokens/step: 4 x 1024 x 128 accumulation steps = 524,288
total: 28,946 steps x 524,288 = 15.2B tokens = 20 tokens/param: Chinchilla-optimal
memory (train.py --plan --memory_gib=24, gptlib/memory.py): at micro-batch 4 in bf16, weights 2.83 + gradients 2.83
+ AdamW 5.65 + activations 4.8 = 16.1 GiB planned with selective activation checkpointing (12.7 with full, 20.0 at
micro-batch 8 with selective). Not measured on a GPU yet: confirm with
`python bench.py config/train_gpt2_760m_3090.py --find_batch_size --memory_gib=24`.
On a 12 GB 4070 fp32 weights, gradients and AdamW states alone are 11.3 GiB: config/train_gpt2_760m_4070.py keeps
AdamW's states in 8 bits (9.9 GiB planned at micro-batch 2); on two 12 GB cards --sharding=optimizer also fits
(torchrun; 10.1 GiB planned a GPU at micro-batch 1).
Learning rate: GPT-3 Large's 2.5e-4 (Brown et al. 2020, table 2.1), cosine to a tenth.
"""
out_dir = "out-gpt2-760m"
n_layer = 24
n_embd = 1536
n_head = 16
batch_size = 4  # 16.1 GiB planned on a 24 GiB card (see above); 128 accumulation steps
activation_checkpointing = "selective"  # keeps the matmul outputs, recomputes the pointwise work
learning_rate = 2.5e-4
min_lr = 2.5e-5
max_iters = 28_946  # 20 tokens per parameter at 524,288 tokens a step
memory_gib = 24  # the card: train.py stops at the start, in one line, if the plan does not fit
keep_last_n = 1  # also keep the latest numbered step checkpoint (9.1 GB each)
