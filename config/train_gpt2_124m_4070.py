"""GPT-2 small (124M) on FineWeb on one 12 GB RTX 4070, as in Karpathy's build-nanogpt.

tokens/step: 8 x 1024 x 64 accumulation steps = 524,288 (2**19, GPT-3 Small's 0.5M batch)
total: 19,073 steps x 524,288 = 10.0B tokens = 80 tokens/param = 4.0x Chinchilla's 20
micro-batch 8: the loss never builds the 8 x 1024 x 50304 logits (gptlib/head_loss.py works 2,048 rows at a
time), so a compiled training step needed 6.7 GiB with the CUDA context on an H200 (BENCHMARKS.md, torch
2.11; 8.9 GiB at micro-batch 16), eval 2.5 GiB: 12 GB fits; capped at 12 GiB (`--memory_gib=12`), the
batch search fit up to 23. Not yet measured on a 4070: confirm with
`python bench.py config/train_gpt2_124m_4070.py --find_batch_size`.
Time: measure with bench.py, then `python train.py config/train_gpt2_124m_4070.py --plan --tokens_per_sec=N`.
"""
# GPT-2 124M with GPT-3 Small's optimisation (6e-4 peak LR, 715 warmup steps, cosine to 6e-5 over 19,073 steps,
# 524,288 tokens/step, T=1024) is the default in gptlib/train_settings.py; this file sets only what differs.
out_dir = "out-gpt2-124m"
batch_size = 8  # micro-batch for 12 GB (see above); 64 accumulation steps
keep_last_n = 2  # also keep the two latest numbered step checkpoints (1.5 GB each)
