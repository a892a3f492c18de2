#!/usr/bin/env bash
# The GPU measurements issue 16 still needs, as device commands (about 12 min on an H100/H200 for all items).
# Results in $OUT (default /tmp/gpu_followup): timeline.txt, logs.tgz (one log per item) and, for the devcheck
# items, results.jsonl. ITEMS picks items (default: all); they run in this file's order, most needed first, and
# one that would end past BUDGET seconds is skipped, so a second call naming the skipped ones finishes the set.
# DRY=1: a CPU dry run at tiny shapes. On the device, from the repository root, carrying devcheck/: a git-ignored
# copy of shared/devcheck with tiktoken_cache/ and data/ (shared/data's fineweb_sample.parquet and
# hellaswag_val.jsonl), which the project-against-nanoGPT items and the user's path need. A session has 15 min of
# device time, the machine's start included, so the two calls together stay near 12:
#     ITEMS="loss fit12 profile fit24" BUDGET=330 bash benchmarks/gpu_followup.sh                # timeout_s 400
#     ITEMS="user attention project16 nano16 memory modern" BUDGET=290 bash benchmarks/gpu_followup.sh  # 340
# (project16 and nano16 only on a card other than the first session's H200: the targets are relative to nanoGPT)
set -u
OUT=${OUT:-/tmp/gpu_followup}; mkdir -p "$OUT"; PY=${PY:-python}; BUDGET=${BUDGET:-420}; START=$(date +%s)  # python: as devcheck, which ran there
ITEMS=${ITEMS:-"loss fit12 profile fit24 user attention memory project16 nano16 modern nano_eager project_eager"}  # all
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/devcheck/tiktoken_cache}  # the device has tiktoken, not its BPE files
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
# 1. the loss op as committed (it writes each chunk's gradient over its logits: not yet measured on a GPU)
item loss        60 150 $PY -m benchmarks.bench_loss $LOSS --json --impls=project_compiled,project,full_compiled
# 2. the largest micro-batch of the 4070 config on an emulated 12 GB card, compiled, then timed
item fit12       90 240 $PY bench.py $CFG4070 --find_batch_size $CAP12 --max_batch_size=32 --json --iters=5 --warmup_iters_bench=2
# 3. where the step's time goes (the MFU target was missed: 39.6% on an H200)
item profile     60 150 $PY -m benchmarks.profile_step $CFG4070 $B16 --top=20
# 4. the same search for the 3090 config on an emulated 24 GB card
item fit24       90 240 $PY bench.py $CFG3090 --find_batch_size $CAP24 --max_batch_size=64 --json --iters=5 --warmup_iters_bench=2
# 5. the user's whole path on the GPU: train, resume from a step checkpoint, sample (cache on/off), eval against the
#    CPU's, export and load in transformers, the same run in fp16 (sample.py, eval.py, export.py, a resume and fp16
#    had never run on a GPU)
DATA=${DATA:-devcheck/data}
if [ -f "$DATA/fineweb_sample.parquet" ]; then
  item user      240 360 $PY -m benchmarks.gpu_user_path $USER --parquet="$DATA/fineweb_sample.parquet" \
    --hellaswag_path="$DATA/hellaswag_val.jsonl"
fi
# 6. project against nanoGPT on this card (the targets are relative; a card other than the first session's H200
#    needs both again), through shared/devcheck's harness when a git-ignored copy of it was carried (devcheck/)
if [ -f devcheck/harness.py ]; then
  item project16 75 150 env OUT="$OUT" $PY devcheck/harness.py --impl=project --recipe=classic $H
  item nano16    75 150 env OUT="$OUT" $PY devcheck/harness.py --impl=nanogpt $H
fi
# 7. attention alone through each SDPA backend: is another kernel than the default faster on this card?
item attention   20 90 $PY -m benchmarks.bench_attention $ATT
# 8. memory of what a 12 GB card runs: compiled bf16 step, eval batch, HellaSwag rows
item memory      90 200 $PY -m benchmarks.bench_memory $MEM
# 9. the modern recipe, micro-step and optimizer step apart (devcheck's one-micro-step harness showed it 25% slower
#    per token than classic; a real step amortises Muon's per-matrix work over 64 micro-steps)
item modern      60 150 $PY -m benchmarks.profile_step $CFG4070 config/recipe_modern.py $B16 --top=20
# 10. eager (Windows, no Triton): run 1 had the project at 57.2 ms against nanoGPT's 44.3, before the eager loss changed
if [ -f devcheck/harness.py ]; then
  item nano_eager    25 90 env OUT="$OUT" $PY devcheck/harness.py --impl=nanogpt $H --compile=0 --mem_eval=0
  item project_eager 25 90 env OUT="$OUT" $PY devcheck/harness.py --impl=project --recipe=classic $H --compile=0 --mem_eval=0
fi
echo "[$(el)s] done" | tee -a "$OUT/timeline.txt"
# the device hands back few files: every log in one archive (a run cut short leaves the logs as they are)
(cd "$OUT" && ls *.log >/dev/null 2>&1 && tar czf logs.tgz *.log && rm -f *.log)
