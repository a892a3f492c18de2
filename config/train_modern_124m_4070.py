"""GPT-2 small's shape on FineWeb with the modern recipe, on one 12 GB RTX 4070: the aim is GPT-2 small's
quality overnight. The same run as

    python train.py config/train_gpt2_124m_4070.py config/recipe_modern.py --max_iters=1907 ...

in one file (config files do not include each other, so the recipe's settings are repeated here; a test
checks they match config/recipe_modern.py).

model: 12 layers x 768, RoPE, RMSNorm, QK-norm, ReLU^2, no biases, untied zero-init head: 162M parameters
(GPT-2 small's 124M, less its biases, plus the untied 38.6M head)
tokens/step: 8 x 1024 x 64 accumulation steps = 524,288
total: 1,907 steps = 1.0B tokens = 6.2 tokens/param (0.31x Chinchilla's 20), a tenth of the classic config's
10B: public speedrun work reached GPT-2 small's FineWeb val loss (3.28) in about that many tokens with these
changes; the CPU benchmark (BENCHMARKS.md) measured the gain at small scale. Not yet run at this size here.
time: about 11 h at 25K tok/s (arithmetic: measure with bench.py, then --plan --tokens_per_sec=N)
memory: the head + loss never hold full logits (gptlib/head_loss.py); not yet measured on a 4070 (bench.py --find_batch_size).
"""
out_dir = "out-modern-124m"
batch_size = 8  # micro-batch for 12 GB, as the classic 4070 config; 64 accumulation steps
max_iters = 1907  # 1.0B tokens
warmup_iters = 100  # WSD: short linear warmup, then constant
keep_last_n = 2  # also keep the two latest numbered step checkpoints
# the recipe (config/recipe_modern.py)
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
bias = False
tie_weights = False
zero_init = True
optimizer = "muon"
muon_lr = 0.02
learning_rate = 3e-3
min_lr = 0.0
weight_decay = 0.0
lr_schedule = "wsd"
decay_frac = 0.4
