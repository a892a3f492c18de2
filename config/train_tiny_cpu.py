"""A tiny GPT for CPU smoke runs and the quickstart: ~0.8M parameters, a few minutes on 2 cores.

tokens/step: 16 x 128 x 2 micro-steps = 4,096; 300 iters = 1.2M tokens
= ~1.5 tokens/param (0.08x Chinchilla's 20): a smoke test, not a real model.
Memory: a few hundred MB of RAM; no GPU needed.
"""
out_dir = "out-tiny"
data_dir = "data/stdlib"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
total_batch_size = batch_size * block_size * 2
max_iters = 300
warmup_iters = 30
learning_rate = 3e-3
min_lr = 3e-4
eval_interval = 50
eval_iters = 8
log_interval = 10
ckpt_interval = 100
compile = False
