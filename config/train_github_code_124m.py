"""GPT-2 small (124M) on codeparrot/github-code (Python + JavaScript) on one 12 GB RTX 4070.

Prepare: python prepare_github_code.py --languages=Python,JavaScript --out_dir=data/github_code
tokens/step: 8 x 1024 x 64 accumulation steps = 524,288
total: 19,073 steps x 524,288 = 10.0B tokens = 80 tokens/param = 4.0x Chinchilla's 20
micro-batch 8 and memory as config/train_gpt2_124m_4070.py (roughly 9-11 GB, not yet measured).
Code overfits once the model starts repeating repositories (a real 427k-step run peaked at 70k steps), so
each language has its own val set, ckpt_best.pt follows the overall one, and the run stops after 12 evals
(3,000 steps) without a new best. HumanEval solution loss every 1,000 steps is a quick code-quality signal.
"""
# GPT-2 124M with GPT-3 Small's optimisation (6e-4 peak LR, 715 warmup steps, cosine to 6e-5 over 19,073 steps,
# 524,288 tokens/step, T=1024) is the default in gptlib/train_settings.py; this file sets only what differs.
out_dir = "out-github-code-124m"
data_dir = "data/github_code"
val_sets = ["val", "val-python", "val-javascript"]
primary_val = "val"
early_stop_patience = 12
humaneval_interval = 1000
humaneval_path = "data/HumanEval.jsonl.gz"  # from github.com/openai/human-eval (data/HumanEval.jsonl.gz)
batch_size = 8  # micro-batch for 12 GB (see above); 64 accumulation steps
keep_last_n = 2  # also keep the two latest numbered step checkpoints (1.5 GB each)
