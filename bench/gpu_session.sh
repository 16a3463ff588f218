#!/usr/bin/env bash
# One device session for bench/RESULTS.md: the exactness tests, finetty's rows, the Unsloth
# anchors on the same card in the same session, an A/B of each speed-up, a profile and the UI
# overhead. It runs in the background, so it may outlast one device command (10 minutes):
#
#   bash bench/gpu_session.sh start SESSION_ID   # starts it, then follows its log
#   bash bench/gpu_session.sh follow             # in the next call: follows it to its end
#
# Each call returns after at most FOLLOW_S seconds (default 560) and copies what exists so far
# into $OUT: session.log, finetty.jsonl, anchors.jsonl, ui.jsonl, pytest.log and profiles.
# Carried, not committed: .site-a (shared/device/build-site.sh --unsloth .site-a) and .anc
# (shared/bench/anchor_bench.py, and SmolLM2's tokenizer files in .anc/tokenizer).
set -u
W=/tmp/finetty-session M=/tmp/finetty-models
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD/.site-a:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error FINETTY_TEST_TOKENIZER=$PWD/.anc/tokenizer

log() { echo "== $(date +%T) $*" >> "$W/session.log"; }

rows() {  # finetty's harness, one JSON row per run into finetty.jsonl
  timeout "${T:-240}" python3 bench/gpu_throughput.py --model-root "$M" --session "$S" \
    --out "$W/finetty.jsonl" --batch 8 --seq 2048 --steps 11 --warmup 3 "$@" 2>>"$W/stderr.log" \
    | cut -c1-400 >> "$W/session.log"
}

body() {
  log "session $S on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" >> "$W/session.log"
  for shape in llama8b qwen05b; do
    python3 .anc/anchor_bench.py --prepare "$shape" --model-root "$M" >> "$W/session.log" 2>&1
  done
  log "exactness tests"
  timeout 300 python3 -m pytest -q -s -p no:cacheprovider tests/engine/test_gpu.py -k fast_path > "$W/pytest.log" 2>&1
  tail -2 "$W/pytest.log" >> "$W/session.log"
  log "finetty rows"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  rows --shape qwen05b --mode lora
  log "anchors"
  timeout 480 python3 .anc/anchor_bench.py --model-root "$M" --out-dir "$W/anchor_out" \
    --suite llama8b:unsloth:qlora,llama8b:unsloth:lora,qwen05b:unsloth:lora --deadline-s 470 \
    --batch 8 --seq 2048 --steps 13 --warmup 3 >> "$W/anchors.log" 2>&1
  cp "$W/anchor_out/results.jsonl" "$W/anchors.jsonl" 2>/dev/null
  log "A/B rows, full fine-tuning, the plain reference, a profile"
  rows --shape llama8b --mode qlora --no-offload
  rows --shape llama8b --mode lora --no-fused-lora
  rows --shape qwen05b --mode full
  rows --shape llama8b --mode lora --plain --steps 8
  T=120 rows --shape llama8b --mode qlora --steps 7 --warmup 4 --profile "$W/profile-qlora.txt"
  log "UI overhead"
  python3 bench/random_model.py --tokenizer .anc/tokenizer --out "$M/ui235m" >> "$W/session.log" 2>&1
  cat > "$W/ui.yaml" <<EOF
name: ui-overhead
model: {name_or_path: $M/ui235m, dtype: bfloat16, max_seq_length: 256}
dataset: {path: "builtin:finetty-skills", format: messages, chat_template: chatml, train_on: responses, val_size: 0}
method: lora
lora: {r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}
training: {learning_rate: 1.0e-4, per_device_train_batch_size: 16, max_steps: 80, optim: adamw_torch_fused, logging_steps: 1, save_steps: 0, seed: 0}
EOF
  timeout 400 python3 bench/ui_overhead.py --preset "$W/ui.yaml" --steps 80 --rounds 3 \
    > "$W/ui.jsonl" 2>>"$W/stderr.log"
  cut -c1-600 "$W/ui.jsonl" >> "$W/session.log"
  log "done"
}

collect() {
  mkdir -p "$OUT"
  for f in session.log finetty.jsonl anchors.jsonl anchors.log ui.jsonl pytest.log profile-qlora.txt; do
    [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
  done
  tail -c 20000 "$W/stderr.log" > "$OUT/stderr-tail.log" 2>/dev/null
}

follow() {
  local deadline=$((SECONDS + ${FOLLOW_S:-560}))
  while [ $SECONDS -lt $deadline ] && ! grep -q "== .* done" "$W/session.log" 2>/dev/null; do
    sleep 5
  done
  collect
  cat "$W/session.log"
}

case ${1:-} in
  start)
    S=${2:?session id}
    rm -rf "$W"; mkdir -p "$W" "$M"
    export S
    setsid bash -c "$(declare -f log rows body); W=$W M=$M S=$S; body" > "$W/body.out" 2>&1 < /dev/null &
    follow
    ;;
  follow) follow ;;
  *) echo "usage: bash bench/gpu_session.sh start SESSION_ID | follow" >&2; exit 2 ;;
esac
