"""A tiny GPT for CPU smoke runs and the quickstart (data/stdlib from prepare_github_code.py --source_dir).

7.3M parameters, of which 6.4M are the 50304 x 128 token embedding shared with the output head.
tokens/step: 8 x 128 x 1 = 1,024; 200 iters = 205K tokens = 0.03 tokens/param (0.001x Chinchilla):
a smoke test that shows the loss falling, not a useful model.
Memory: well under 1 GB of RAM; no GPU needed.
"""
out_dir = "out-tiny"
data_dir = "data/stdlib"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 8
total_batch_size = batch_size * block_size
max_iters = 200
warmup_iters = 20
learning_rate = 3e-3
min_lr = 3e-4
eval_interval = 50
eval_iters = 4
log_interval = 10
ckpt_interval = 100
compile = False
