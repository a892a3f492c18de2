"""GPT-2 small (124M) on FineWeb on one 12 GB RTX 4070, as in Karpathy's build-nanogpt.

tokens/step: 8 x 1024 x 64 accumulation steps = 524,288 (2**19, GPT-3 Small's 0.5M batch)
total: 19,073 steps x 524,288 = 10.0B tokens = 80 tokens/param = 4.0x Chinchilla's 20
micro-batch 8: activations of 8 x 1024 tokens plus the 8 x 1024 x 50304 logits (bf16 + fp32 loss, ~2.5 GB)
fit beside ~2 GB of weights, grads and AdamW state; expect roughly 9-11 GB in use (not yet measured on
a 4070: confirm with `python bench.py config/train_gpt2_124m_4070.py --find_batch_size`).
Time: measure with bench.py, then `python train.py config/train_gpt2_124m_4070.py --plan --tokens_per_sec=N`.
"""
out_dir = "out-gpt2-124m"
data_dir = "data/fineweb"
batch_size = 8
block_size = 1024
total_batch_size = 524288
max_iters = 19073
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
eval_interval = 250
eval_iters = 20
ckpt_interval = 1000
keep_last_n = 2
compile = True
