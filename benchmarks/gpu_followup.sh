#!/usr/bin/env bash
# The GPU measurements to take on a lent device (about 12 min on an H100/H200 for all items). Results in $OUT
# (default /tmp/gpu_followup): timeline.txt, logs.tgz (one log per item) and, for the devcheck items,
# results.jsonl. ITEMS picks items (default: all); they run in this file's order, most needed first, and one that
# would end past BUDGET seconds (by its estimate) is skipped, so a second call naming the skipped ones finishes
# the set. DRY=1: a CPU dry run at tiny shapes. On the device, from the repository root, carrying devcheck/: a
# git-ignored copy of shared/devcheck with tiktoken_cache/ and data/ (shared/data's fineweb_sample.parquet and
# hellaswag_val.jsonl), which the project-against-nanoGPT items and the user's path need. A session has 15 min of
# device time, the machine's start included (about 30 s in the fourth session); run 4 took 720 s for all items. Run 5
# (2026-12-04) measured the three recipes12_* items (225 s, FlexAttention's compile included) but not the speedrun
# item, whose speedrun run compiled for over 75 s and was cut off; it now trains 6M tokens (20M overfit the 4.9M-token
# stdlib in run 5). Next session, shortest first: issue 36's speed items (about 11 min with FlexAttention's compiles;
# carry devcheck/ with data/), then issue 35's training comparison (the speedrun item) and issue 27's bigger models
# (carry a torchao wheel in devcheck/):
#     ITEMS="fineweb36 real_modern real_speedrun speed_tables speed_blocks speed_heads" BUDGET=480 bash benchmarks/gpu_followup.sh   # timeout_s 540
#     ITEMS="fineweb36 speed_fp8 speed_all consumer_tiles speedrun" BUDGET=540 bash benchmarks/gpu_followup.sh                      # 600
#     (then: ITEMS="fineweb36 modded18 ours18" BUDGET=480, carrying devcheck/modded/train_gpt.py: record #18's script,
#      `git show HEAD:records/track_1_short/2025-01-04_SoftCap/31d6c427-f1f7-4d8a-91be-a67b5dcd13fd.txt | sed '/^=====/q' | sed '$d'`
#      from KellerJordan/modded-nanogpt; then ITEMS="big350_12 big760_12 big760_24 big350_12_full" BUDGET=480;
#      ITEMS="loss project16 nano16 profile fit12 user")
set -u
OUT=${OUT:-/tmp/gpu_followup}; mkdir -p "$OUT"; PY=${PY:-python}; BUDGET=${BUDGET:-420}; START=$(date +%s)  # python: as devcheck, which ran there
ITEMS=${ITEMS:-"fineweb36 real_modern real_speedrun speed_tables speed_blocks speed_heads speed_fp8 speed_all consumer_tiles modded18 ours18 recipes12_classic recipes12_modern recipes12_speedrun speedrun big350_12 big760_12 big760_24 big350_12_full loss project16 nano16 profile fit12 memory fit24 user attention modern nano_eager project_eager"}  # all
# the device has tiktoken, not its BPE files, and presets TIKTOKEN_CACHE_DIR to an empty /opt/tiktoken_cache (which
# failed the user's path in the fourth device session): the carried copy wins whenever it is there
if [ -d devcheck/tiktoken_cache ]; then export TIKTOKEN_CACHE_DIR=$PWD/devcheck/tiktoken_cache; fi
export PYTHONUNBUFFERED=1
# issue 27's 8-bit AdamW states need torchao, which the device may lack: a wheel carried in devcheck/ (pure Python
# with optional CUDA kernels; `pip download torchao --no-deps -d devcheck`) installs offline
if ! $PY -c "import torchao" 2>/dev/null && ls devcheck/torchao-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index devcheck/torchao-*.whl > "$OUT/torchao_install.txt" 2>&1
fi
el() { echo $(( $(date +%s) - START )); }
item() {  # item NAME ESTIMATE_S TIMEOUT_S command...
  local name=$1 est=$2 to=$3; shift 3
  case " $ITEMS " in *" $name "*) ;; *) return ;; esac
  if (( $(el) + est > BUDGET )); then echo "[$(el)s] SKIP $name" | tee -a "$OUT/timeline.txt"; return; fi
  echo "[$(el)s] START $name" | tee -a "$OUT/timeline.txt"
  timeout "$to" "$@" > "$OUT/$name.log" 2>&1; local rc=$?  # before $(el), which sets $? itself
  echo "[$(el)s] END $name rc=$rc" | tee -a "$OUT/timeline.txt"
  tail -n 3 "$OUT/$name.log" | cut -c1-500 >> "$OUT/timeline.txt"
}
if [ "${DRY:-0}" = 1 ]; then
  CFG4070="config/train_tiny_cpu.py --device=cpu"; CFG3090="$CFG4070"; CAP12=""; CAP24=""
  LOSS="--device=cpu --rows=512 --vocab_size=2048 --iters=2"; MEM="--device=cpu --n_layer=1 --n_embd=64 --n_head=2 --block_size=256"
  ATT="--device=cpu --batch_size=1 --n_head=2 --block_size=128 --iters=2"; B16="--batch_size=2 --compile=False"
  H="--tiny=1 --T=128 --steps=2 --warmup=1 --B=2 --compile=0"; USER="--device=cpu --tiny=True --compile=False --batch_size=4 --iters=4"
  BENCH_SHORT="--iters=1 --warmup_iters_bench=0 --n_layer=2 --n_embd=64 --n_head=2 --compile=False"; SPEED_SHORT="--value_embeds=1 --phases=2"
  HEADS128="--n_head=1"; FP8=""  # (head size 64 at this width; the CPU has no FP8 tensor cores: the flag is refused)
  CFG350="$CFG4070"; CFG760_12="$CFG4070 --adamw_states=8bit --activation_checkpointing=selective"; CFG760_24="$CFG4070 --activation_checkpointing=selective"; BIG="--iters=1 --warmup_iters_bench=0 --max_batch_size=2"
  RECIPES="--device=cpu --n_layer=2 --n_head=2 --n_embd=32 --block_size=128 --batch_size=2 --tokens=2560 --eval_interval=5 --eval_tokens=512 --window=64 --window_start=16 --value_embeds=1"
else
  CFG4070="config/train_gpt2_124m_4070.py"; CFG3090="config/train_gpt2_124m_3090.py"; CAP12="--memory_gib=12"; CAP24="--memory_gib=24"
  LOSS="--device=cuda --rows=16384"; MEM="--device=cuda --batch_size=8 --n_layer=12 --compile=True --dtype=bfloat16 --memory_gib=12"
  ATT="--device=cuda"; B16="--batch_size=16"; H="--steps=12 --warmup=3 --B=16 --compile=1"; USER="--device=cuda"
  BENCH_SHORT="--iters=10 --warmup_iters_bench=3"; SPEED_SHORT=""; HEADS128="--n_head=6"
  FP8=$($PY -c "import torch; print('--fp8_head=True' if torch.cuda.get_device_capability() >= (8, 9) else '')")
  # 12 x 768, rows of 8 x 1024 (as the 4070 config), 6M tokens (1.2 epochs of the device's stdlib): classic 66 s,
  # modern 92 s in run 5 (8,192-token steps: Muon's step costs more than the micro-step there), speedrun's compile ~90 s
  CFG350="config/train_gpt2_350m_4070.py"; CFG760_12="config/train_gpt2_760m_4070.py"; CFG760_24="config/train_gpt2_760m_3090.py"; BIG="--iters=3 --warmup_iters_bench=2"
  RECIPES="--device=cuda --compile=True --dtype=bfloat16 --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --batch_size=8 --tokens=6000000 --eval_interval=100 --eval_tokens=524288 --window=1792 --window_start=128 --window_pattern=LSSSLS --value_embeds=3"
fi
DATA=${DATA:-devcheck/data}
# 0. issue 36 (first in the next session): the speedrun recipe as a run does it (FineWeb documents, the window at 4 parts of its schedule, gradients
#     that accumulate), then each of the records' speed choices on top, then all of them; the consumer tiles forced
#     (as a 4070 sizes them, 99 KB) at head size 128; the FP8 head needs an FP8 card (H100/H200: yes; an A100: skip)
if [ -f "$DATA/fineweb_sample.parquet" ]; then
  item fineweb36  30 90 $PY prepare_fineweb.py --data_files="$DATA/fineweb_sample.parquet" --out_dir="$OUT/fineweb" --val_tokens=200000
  REAL="--use_data --data_dir=$OUT/fineweb"
  item real_modern    60 150 $PY bench.py $CFG4070 config/recipe_modern.py $CAP12 --json $BENCH_SHORT $REAL
  item real_speedrun  90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL
  item speed_tables   90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL --table_dtype=bf16
  item speed_blocks   90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL --attn_block=128
  item speed_heads    90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL $HEADS128
  item speed_fp8      90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL $FP8
  item speed_all      90 180 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL --table_dtype=bf16 --attn_block=128 $HEADS128 $FP8
  item consumer_tiles 90 180 env GPT2KIT_FLEX_SMEM_BYTES=101376 $PY bench.py $CFG4070 config/recipe_speedrun.py $SPEED_SHORT $CAP12 --json $BENCH_SHORT $REAL $HEADS128
  # modded-nanogpt's own record #18 (train_gpt.py, extracted from its log into devcheck/modded/ on a machine with the
  # repository; never committed) on the same tokens: 8 x 65,536 tokens a step, its window schedule squeezed into 30
  # steps (it times steps 11-30); then ours at the same tokens per micro-step and the same schedule
  if [ -f devcheck/modded/train_gpt.py ]; then
    item modded18 240 360 bash -c "$PY -m benchmarks.modded_shards --data_dir=$OUT/fineweb --out_dir=$OUT/modded/data/fineweb10B --copies=5 \
      && sed -e 's/num_iterations = 1390/num_iterations = 30/' -e 's/val_loss_every = 125/val_loss_every = 0/' \
             -e 's/val_tokens = 10485760/val_tokens = 65536/' devcheck/modded/train_gpt.py > $OUT/modded/train_gpt.py \
      && cd $OUT/modded && $PY -m torch.distributed.run --standalone --nproc_per_node=1 train_gpt.py"
    item ours18 150 240 $PY bench.py $CFG4070 config/recipe_speedrun.py --block_size=65536 --batch_size=1 --total_batch_size=524288 \
      --max_iters=30 --phases=4 --json $BENCH_SHORT $REAL
  fi
fi
# 1. the loss op: the compiled gradient in a buffer of its own again (run 3's form), and the fixed-vocab candidate
item loss        75 150 $PY -m benchmarks.bench_loss $LOSS --json --impls=project_compiled,project_fixed_vocab,project,full_compiled
# 2. project against nanoGPT at the same micro-batch on this card (the targets are relative), through
#    shared/devcheck's harness when a git-ignored copy of it was carried (devcheck/)
if [ -f devcheck/harness.py ]; then
  item project16 75 150 env OUT="$OUT" $PY devcheck/harness.py --impl=project --recipe=classic $H
  item nano16    75 150 env OUT="$OUT" $PY devcheck/harness.py --impl=nanogpt $H
fi
# 3. where the step's time goes (MFU: 39.6% in run 3, 35.1% in run 4)
item profile     60 150 $PY -m benchmarks.profile_step $CFG4070 $B16 --top=20
# 4. the largest micro-batch of the 4070 config on an emulated 12 GB card, compiled, then timed
item fit12       90 240 $PY bench.py $CFG4070 --find_batch_size $CAP12 --max_batch_size=32 --json --iters=5 --warmup_iters_bench=2
# 5. memory of what a 12 GB card runs: compiled bf16 step, eval batch, HellaSwag rows
item memory      90 200 $PY -m benchmarks.bench_memory $MEM
# 6. the same search for the 3090 config on an emulated 24 GB card
item fit24       90 240 $PY bench.py $CFG3090 --find_batch_size $CAP24 --max_batch_size=64 --json --iters=5 --warmup_iters_bench=2
# 7. the user's whole path on the GPU: train, resume from a step checkpoint, sample (cache on/off), eval against the
#    CPU's, export and load in transformers, the same run in fp16 (all passed in run 4)
if [ -f "$DATA/fineweb_sample.parquet" ]; then
  item user      240 360 $PY -m benchmarks.gpu_user_path $USER --parquet="$DATA/fineweb_sample.parquet" \
    --hellaswag_path="$DATA/hellaswag_val.jsonl"
fi
# 8. attention alone through each SDPA backend: is another kernel than the default faster on this card?
item attention   20 90 $PY -m benchmarks.bench_attention $ATT
# 9. the modern recipe, micro-step and optimizer step apart (run 4: micro-step as classic's, Muon's step 7.87 ms)
item modern      60 150 $PY -m benchmarks.profile_step $CFG4070 config/recipe_modern.py $B16 --top=20
# 10. eager (Windows, no Triton): the project 50.2 ms against nanoGPT's 44.4 in run 4 (57.2 against 44.3 in run 1)
if [ -f devcheck/harness.py ]; then
  item nano_eager    25 90 env OUT="$OUT" $PY devcheck/harness.py --impl=nanogpt $H --compile=0 --mem_eval=0
  item project_eager 25 90 env OUT="$OUT" $PY devcheck/harness.py --impl=project --recipe=classic $H --compile=0 --mem_eval=0
fi
# 11. the speedrun recipe (issue 26): compiled tok/s and memory of the three recipes at the 4070 config's tokens per
#     micro-step (8 x 1024; the speedrun recipe makes it one row of 8,192) on an emulated 12 GB card; FlexAttention
#     compiled (on an H100/H200 with its default tiles: the consumer-card tiles need a card under 160 KB of shared memory)
for r in classic modern speedrun; do
  case $r in classic) RECIPE="";; modern) RECIPE="config/recipe_modern.py";; speedrun) RECIPE="config/recipe_speedrun.py $SPEED_SHORT";; esac
  item "recipes12_$r" 60 150 $PY bench.py $CFG4070 $RECIPE $CAP12 --json $BENCH_SHORT
done
# 12. modern against speedrun on the same tokens (the device has no FineWeb: Python's own sources, as the user's
#     path), val loss at equal tokens, compiled
item speedrun  420 540 bash -c "$PY prepare_github_code.py --source_dir=\$($PY -c 'import sysconfig; print(sysconfig.get_paths()[\"stdlib\"])') --out_dir=$OUT/stdlib --val_repo_fraction=0.05 > /dev/null && $PY -m benchmarks.bench_recipes --data_dir=$OUT/stdlib --work_dir=$OUT/recipes $RECIPES --classic_lrs=6e-4 --modern_scales=1 --ladder --rungs=softcap15"
# 13. bigger models (issue 27) on emulated 12 and 24 GB cards, compiled, under their configs' memory options (350M:
#     none; 760M on 12 GB: 8-bit AdamW + selective; on 24 GB: selective): the largest micro-batch, its tok/s, and the
#     peak memory beside the planner's figure (bench.py prints both); then 350M with full checkpointing
item big350_12      150 300 $PY bench.py $CFG350 --find_batch_size $CAP12 --max_batch_size=16 --json $BIG
item big760_12      180 300 $PY bench.py $CFG760_12 --find_batch_size $CAP12 --max_batch_size=8 --json $BIG
item big760_24      180 300 $PY bench.py $CFG760_24 --find_batch_size $CAP24 --max_batch_size=16 --json $BIG
item big350_12_full 150 300 $PY bench.py $CFG350 --activation_checkpointing=full --find_batch_size $CAP12 --max_batch_size=32 --json $BIG
echo "[$(el)s] done" | tee -a "$OUT/timeline.txt"
# the device hands back few files: every log in one archive (a run cut short leaves the logs as they are)
# and the training runs' logs and metrics (a folder name with '+' does not come back on its own)
(cd "$OUT" && ls *.log >/dev/null 2>&1 && tar czf logs.tgz *.log $(ls recipes/*/log.txt recipes/*/metrics.jsonl modded/logs/*.txt 2>/dev/null) \
  && rm -f *.log && rm -rf recipes stdlib fineweb modded)  # their checkpoints and shards are too large to come back
