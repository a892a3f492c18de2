"""GPT-2 small (124M) on FineWeb on one 24 GB RTX 3090 (also fits a 4090).

tokens/step: 16 x 1024 x 32 accumulation steps = 524,288 (2**19, GPT-3 Small's 0.5M batch)
total: 19,073 steps x 524,288 = 10.0B tokens = 80 tokens/param = 4.0x Chinchilla's 20
micro-batch 16: twice the 4070 config's activations (the logits are never built in full); a compiled
training step needed 8.9 GiB with the CUDA context on an H200 (BENCHMARKS.md, torch 2.11), so 24 GB has room
for a larger micro-batch: capped at 24 GiB (`--memory_gib=24`), the batch search fit up to 56. Not yet
measured on a 3090: `python bench.py config/train_gpt2_124m_3090.py --find_batch_size` finds the largest.
Multi-GPU: torchrun --standalone --nproc_per_node=N train.py config/train_gpt2_124m_3090.py
(accumulation drops to 32/N; total_batch_size stays 524,288).
"""
# GPT-2 124M with GPT-3 Small's optimisation (6e-4 peak LR, 715 warmup steps, cosine to 6e-5 over 19,073 steps,
# 524,288 tokens/step, T=1024) is the default in gptlib/train_settings.py; this file sets only what differs.
out_dir = "out-gpt2-124m"
batch_size = 16  # micro-batch for 24 GB (see above); 32 accumulation steps
keep_last_n = 2  # also keep the two latest numbered step checkpoints (1.5 GB each)
