"""Tiny Shakespeare (1 MB of plays, 338K GPT-2 tokens) on a CPU or a small GPU: the classic first run.

    curl -O https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
    python prepare_fineweb.py --data_files input.txt --out_dir data/shakespeare --val_tokens 30000
    python train.py config/train_shakespeare.py                  # CPU: a few minutes
    python sample.py config/train_shakespeare.py --start="ROMEO:" --max_new_tokens=200
    python eval.py config/train_shakespeare.py                   # the whole val split

On a GPU, a bigger model over the same tokens (expect the val loss to bottom out and rise again: 300K tokens
are few, and ckpt_best.pt keeps the best):
    python train.py config/train_shakespeare.py --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 \\
        --batch_size=16 --total_batch_size=8192 --compile=True --max_iters=1000 --eval_interval=100 --dropout=0.2

tokens/step: 8 x 128 x 2 accumulation steps = 2,048; 300 iters = 614K tokens = about 2 epochs of train.
What to expect: docs/data.md, "Tiny Shakespeare" (measured on a 2-core CPU).
"""
out_dir = "out-shakespeare"
data_dir = "data/shakespeare"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 8
total_batch_size = 2 * batch_size * block_size
max_iters = 300
warmup_iters = 15
learning_rate = 2e-3
min_lr = 2e-4
eval_interval = 50
eval_tokens = 0  # the whole val split (30K tokens): it is small
log_interval = 10
ckpt_interval = 100
compile = False
