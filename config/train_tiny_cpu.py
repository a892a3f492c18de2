"""A tiny GPT for CPU smoke runs and the quickstart (data/stdlib from prepare_github_code.py --source_dir).

    python train.py config/train_tiny_cpu.py                            # GPT-2's recipe
    python train.py config/train_tiny_cpu.py config/recipe_modern.py    # the modern recipe (what quickstart.sh runs)

7.3M parameters with GPT-2's recipe (6.4M of them the 50304 x 128 token embedding shared with the output
head), 13.7M with the modern one (its head is untied).
tokens/step: 8 x 128 x 2 accumulation steps = 2,048 (1 step each on 2 ranks under torchrun);
200 iters = 410K tokens: a smoke test that shows the loss falling and, with the modern recipe, samples that
look like Python; not a useful model.
Measured on a 2-core AMD EPYC (CPU only, idle, 2026-11-26), modern recipe: 200 steps at 3,170-3,240 tok/s, 3 min 56 s
for the whole quickstart, val loss 10.83 -> 3.22 (the whole val split: 3.23), peak RSS 1.65 GB.
"""
out_dir = "out-tiny"
data_dir = "data/stdlib"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 8
total_batch_size = 2 * batch_size * block_size  # divides over 1 or 2 processes
max_iters = 200
warmup_iters = 10
learning_rate = 3e-3
min_lr = 3e-4
eval_interval = 50
eval_tokens = 131072  # 1,024 windows of 128 at even strides over val (see BENCHMARKS.md: eval sample)
log_interval = 10
ckpt_interval = 100
compile = False
