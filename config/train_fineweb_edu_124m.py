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
out_dir = "out-fineweb-edu-124m"
data_dir = "data/fineweb_edu"
batch_size = 8
block_size = 1024
total_batch_size = 524288
max_iters = 19073
warmup_iters = 715
learning_rate = 6e-4
min_lr = 6e-5
eval_interval = 250
eval_iters = 20
hellaswag_interval = 2500
ckpt_interval = 1000
keep_last_n = 2
compile = True
