"""The modern recipe: the settings that make it, and nothing about size or data, so it layers on any config
(config files apply in order, later ones win):

    python train.py config/train_tiny_cpu.py config/recipe_modern.py
    python train.py config/train_gpt2_124m_4070.py config/recipe_modern.py

What each switch does and where it comes from: docs/recipes.md, "The modern recipe". Learning rates were tuned
on the CPU benchmark (python -m benchmarks.bench_recipes; BENCHMARKS.md).
"""
# model (model.py): rotary positions, RMSNorm, QK-norm, ReLU^2, no biases, an untied head, zero-init projections
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
bias = False
tie_weights = False
zero_init = True
# optimizer (gptlib/optim.py): Muon for the hidden matrices, AdamW for embeddings, head and gains
optimizer = "muon"
muon_lr = 0.02
learning_rate = 3e-3
min_lr = 0.0
weight_decay = 0.0
# schedule: warmup, stable, then a linear decay over the last 40% (warmup-stable-decay)
lr_schedule = "wsd"
decay_frac = 0.4
