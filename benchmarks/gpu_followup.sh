#!/usr/bin/env bash
# The GPU measurements to take on a lent device (about 12 min on an H100/H200 for all items). Results in $OUT
# (default /tmp/gpu_followup): timeline.txt, logs.tgz (one log per item) and, for the devcheck items,
# results.jsonl. ITEMS picks items (default: all); they run in this file's order, most needed first, and one that
# would end past BUDGET seconds (by its estimate) is skipped, so a second call naming the skipped ones finishes
# the set. DRY=1: a CPU dry run at tiny shapes. On the device, from the repository root, carrying devcheck/: a
# git-ignored copy of shared/devcheck with tiktoken_cache/ and data/ (shared/data's fineweb_sample.parquet and
# hellaswag_val.jsonl), which the project-against-nanoGPT items and the user's path need. A session has 15 min of
# device time, the machine's start included (about 30 s in the fourth session); run 4 took 720 s for all items:
#     ITEMS="loss project16 nano16 profile fit12" BUDGET=330 bash benchmarks/gpu_followup.sh                # timeout_s 400
#     ITEMS="memory fit24 user modern attention nano_eager project_eager" BUDGET=450 bash benchmarks/gpu_followup.sh  # 500
# The first call re-measures what changed after run 4: the compiled loss's gradient in a buffer of its own again
# (run 3's form, 9.28 ms; run 4's over-the-logits form 14.70), the fixed-vocab candidate, and the step against
# nanoGPT's.
set -u
OUT=${OUT:-/tmp/gpu_followup}; mkdir -p "$OUT"; PY=${PY:-python}; BUDGET=${BUDGET:-420}; START=$(date +%s)  # python: as devcheck, which ran there
ITEMS=${ITEMS:-"loss project16 nano16 profile fit12 memory fit24 user attention modern nano_eager project_eager"}  # all
# the device has tiktoken, not its BPE files, and presets TIKTOKEN_CACHE_DIR to an empty /opt/tiktoken_cache (which
# failed the user's path in the fourth device session): the carried copy wins whenever it is there
if [ -d devcheck/tiktoken_cache ]; then export TIKTOKEN_CACHE_DIR=$PWD/devcheck/tiktoken_cache; fi
export PYTHONUNBUFFERED=1
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
else
  CFG4070="config/train_gpt2_124m_4070.py"; CFG3090="config/train_gpt2_124m_3090.py"; CAP12="--memory_gib=12"; CAP24="--memory_gib=24"
  LOSS="--device=cuda --rows=16384"; MEM="--device=cuda --batch_size=8 --n_layer=12 --compile=True --dtype=bfloat16 --memory_gib=12"
  ATT="--device=cuda"; B16="--batch_size=16"; H="--steps=12 --warmup=3 --B=16 --compile=1"; USER="--device=cuda"
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
DATA=${DATA:-devcheck/data}
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
echo "[$(el)s] done" | tee -a "$OUT/timeline.txt"
# the device hands back few files: every log in one archive (a run cut short leaves the logs as they are)
(cd "$OUT" && ls *.log >/dev/null 2>&1 && tar czf logs.tgz *.log && rm -f *.log)
