"""The speedrun recipe: the modern recipe plus the architecture of modded-nanogpt's records #9-#18, as settings
(docs/recipes.md, "Which recipe"). Like recipe_modern.py it layers on any size config:

    python train.py config/train_gpt2_124m_4070.py config/recipe_speedrun.py
    python train.py config/train_tiny_cpu.py config/recipe_speedrun.py --value_embeds=2     # 4 blocks: 2 tables

The records reached GPT-2 small's FineWeb val loss 3.28 in 0.73B tokens with these features (record #18),
against 2.40B for the modern recipe (record #8). Each feature is a setting of model.py or train.py; what each
bought on the CPU yardstick: BENCHMARKS.md, "The speedrun recipe".
"""
# the modern recipe (config/recipe_modern.py; config files do not include each other, a test keeps them equal)
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp_act = "relu2"
bias = False
tie_weights = False
zero_init = True
optimizer = "muon"
muon_lr = 0.02
learning_rate = 3e-3
min_lr = 0.0
weight_decay = 0.0
lr_schedule = "wsd"
decay_frac = 0.4
# long rows: the same tokens per micro-step, in one row (the records: 64K-token rows), documents masked apart
block_size = batch_size * block_size  # the 4070 config: 8 x 1024 -> one row of 8,192
batch_size = 1
doc_mask = True  # record #12
attn_window = 1792  # sliding window, by block: 'L' 1792, 'S' 896 (records #12, Sub3Min's long-short pattern)
window_pattern = "LSSSLS"
window_start = 128  # the window grows 128 -> 1792 over the run (record #13)
# shortcuts and extra embeddings
x0_skip = True  # record #9
unet_skips = True  # record #11
value_embeds = 3  # record #14's 012 ... 012 tables (they replaced #9's value residual)
logit_softcap = 15  # record #18
muon_momentum_warmup = 300  # record #9: Muon's momentum rises 0.85 -> 0.95 over the first 300 steps
