"""The library behind the commands (train.py, sample.py, eval.py, ...): everything but the model.

    errors      one error policy: UserError and its exit codes, run_command() for every script
    settings    settings declared once (default, range, comment), parsed without running code, validated
    shards      the token-shard format: names, manifest, checksums, streaming writer, checked reader
    loader      the resumable training loader (stream or shuffled-window order)
    prepare     the streaming parquet/text -> shards pipeline both prepare scripts use
    runtime     devices, precision, torch.compile, torchrun, pinned batch copies
    checkpoint  atomic checkpoints, their versions, and the training loop's state as one unit
    optim       optimizers (AdamW, Muon) and learning-rate schedules, for train.py and bench.py
    locks       one process at a time per run directory and dataset
    evals       validation loss, HellaSwag, HumanEval
    monitor     FLOPs, MFU, the run planner, metrics.jsonl, trackers
    pretrained  OpenAI GPT-2 weights in, transformers layout out
    exports     export targets: one mapping table each, or the model's own code (remote_code/)
    head_loss   the fused head + cross-entropy op that never holds full logits (model.py's loss)
    attention   document and sliding-window masks, FlexAttention or SDPA (model.py's attention)
Nothing here runs on import.
"""
