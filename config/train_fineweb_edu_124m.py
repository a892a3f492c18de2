"""GPT-2 small (124M) on FineWeb-Edu (sample-10BT) on one 12 GB RTX 4070, tracking HellaSwag.

Prepare: python prepare_fineweb.py --dataset=fineweb-edu --subset=sample-10BT --out_dir=data/fineweb_edu
tokens/step: 8 x 1024 x 64 accumulation steps = 524,288
total: 19,073 steps x 524,288 = 10.0B tokens = 80 tokens/param = 4.0x Chinchilla's 20,
about 1 epoch of sample-10BT (the planner prints the exact figure from the manifest)
micro-batch 8 and memory as config/train_gpt2_124m_4070.py (roughly 9-11 GB, not yet measured);
on a 24 GB 3090 pass --batch_size=16.
HellaSwag (acc_norm; GPT-2 124M scores 0.2955) every 2,500 steps; the dataset downloads once with
`datasets`, or give hellaswag_path to a local jsonl.
"""
# GPT-2 124M with GPT-3 Small's optimisation (6e-4 peak LR, 715 warmup steps, cosine to 6e-5 over 19,073 steps,
# 524,288 tokens/step, T=1024) is the default in gptlib/train_settings.py; this file sets only what differs.
out_dir = "out-fineweb-edu-124m"
data_dir = "data/fineweb_edu"
hellaswag_interval = 2500
batch_size = 8  # micro-batch for 12 GB (see above); 64 accumulation steps
keep_last_n = 2  # also keep the two latest numbered step checkpoints (1.5 GB each)
