#!/usr/bin/env bash
# One device session for bench/RESULTS.md: the GPU exactness tests, the UI overhead, finetty's
# rows with the Unsloth anchors on the same card in the same session, and an A/B row. It runs in the background, so it may outlast one device command (10 minutes):
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

header() {  # what the session is ($1), on which card, under which versions
  log "$1 $S on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" >> "$W/session.log"
}

rows() {  # finetty's harness, one JSON row per run into finetty.jsonl
  timeout "${T:-240}" python3 bench/gpu_throughput.py --model-root "$M" --session "$S" \
    --out "$W/finetty.jsonl" --batch 8 --seq 2048 --steps 11 --warmup 3 "$@" 2>>"$W/stderr.log" \
    | cut -c1-400 >> "$W/session.log"
}

prepare() {  # the random-weight model of shape $1 under $M, made by the anchors' script for both stacks
  python3 .anc/anchor_bench.py --prepare "$1" --model-root "$M" >> "$W/session.log" 2>&1
}

gpu_tests() {  # tests/engine/test_gpu.py within $1 seconds, selected by -k $2; pytest.log
  timeout "$1" python3 -m pytest -q -s -p no:cacheprovider tests/engine/test_gpu.py -k "$2" > "$W/pytest.log" 2>&1
  tail -3 "$W/pytest.log" >> "$W/session.log"
}

anchors_8b() {  # Unsloth's QLoRA and LoRA rows at 8B, into anchors.jsonl
  timeout 420 python3 .anc/anchor_bench.py --model-root "$M" --out-dir "$W/anchor_8b" \
    --suite llama8b:unsloth:qlora,llama8b:unsloth:lora --deadline-s 410 \
    --batch 8 --seq 2048 --steps 13 --warmup 3 >> "$W/anchors.log" 2>&1
  cat "$W"/anchor_*/results.jsonl > "$W/anchors.jsonl" 2>/dev/null
}

anchors_05b() {  # Unsloth's LoRA row at 0.5B, into anchors.jsonl (\$1: a name for repeats)
  timeout 240 python3 .anc/anchor_bench.py --model-root "$M" --out-dir "$W/anchor_05b${1:-}" \
    --suite qwen05b:unsloth:lora --deadline-s 230 --batch 8 --seq 2048 --steps 23 --warmup 3 >> "$W/anchors.log" 2>&1
  cat "$W"/anchor_*/results.jsonl > "$W/anchors.jsonl" 2>/dev/null
}

body() {
  header session
  prepare qwen05b
  log "exactness tests"
  gpu_tests 300 fast_path
  log "UI overhead"
  python3 bench/random_model.py --tokenizer .anc/tokenizer --out "$M/ui235m" >> "$W/session.log" 2>&1
  {
    echo "name: ui-overhead"
    echo "model: {name_or_path: $M/ui235m, dtype: bfloat16, max_seq_length: 256}"
    echo 'dataset: {path: "builtin:finetty-skills", format: messages, chat_template: chatml, train_on: responses, val_size: 0}'
    echo "method: lora"
    echo "lora: {r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}"
    echo "training: {learning_rate: 1.0e-4, per_device_train_batch_size: 16, max_steps: 80, optim: adamw_torch_fused, logging_steps: 1, save_steps: 0, seed: 0}"
  } > "$W/ui.yaml"
  timeout 300 python3 bench/ui_overhead.py --preset "$W/ui.yaml" --steps 80 --rounds 3 \
    > "$W/ui.jsonl" 2>>"$W/stderr.log"
  cut -c1-900 "$W/ui.jsonl" >> "$W/session.log"
  log "0.5B: finetty, Unsloth, finetty, A/B"
  rows --shape qwen05b --mode lora --steps 23
  anchors_05b
  rows --shape qwen05b --mode lora --steps 23
  rows --shape qwen05b --mode lora --steps 23 --no-liger-loss
  log "8B: finetty, Unsloth"
  prepare llama8b
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  anchors_8b
  log "done"
}

final() {  # the table: finetty and the anchors in one session, A/B rows, packing
  header session
  prepare llama8b
  log "8B: finetty, Unsloth"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  anchors_8b
  log "0.5B: finetty, Unsloth, full"
  prepare qwen05b
  rows --shape qwen05b --mode lora --steps 23
  anchors_05b
  rows --shape qwen05b --mode full --steps 15
  log "packing and A/B"
  rows --shape llama8b --mode lora --steps 7 --batching pad
  rows --shape llama8b --mode lora --steps 7 --batching pack-varlen
  rows --shape llama8b --mode lora --steps 7 --batching pack-mask
  rows --shape llama8b --mode lora --steps 8 --no-save-middle
  log "done"
}

alternate() {  # 0.5B: finetty and Unsloth taking turns, three rows each; the varlen GPU test
  header session
  prepare qwen05b
  for round in 1 2 3; do
    log "0.5B round $round: finetty, Unsloth"
    rows --shape qwen05b --mode lora --steps 23
    anchors_05b "_$round"
  done
  log "GPU tests"
  gpu_tests 200 varlen
  log "done"
}

grouped() {  # A/B of grouped LoRA (the default) in alternating rounds, 0.5B then 8B LoRA (no anchors)
  header grouped
  prepare qwen05b
  for round in 1 2 3; do
    log "0.5B round $round: one by one, grouped"
    rows --shape qwen05b --mode lora --steps 23 --no-grouped-lora
    rows --shape qwen05b --mode lora --steps 23
  done
  prepare llama8b
  log "8B LoRA: one by one, grouped"
  rows --shape llama8b --mode lora --no-grouped-lora
  rows --shape llama8b --mode lora
  log "done"
}

check() {  # CUDA graph layers: their GPU tests, then one 0.5B pair (eager, graphs)
  header check
  prepare qwen05b
  log "GPU tests"
  gpu_tests 300 "cuda_graph or fast_path_matches"
  log "0.5B: eager, graphs"
  rows --shape qwen05b --mode lora --steps 15
  rows --shape qwen05b --mode lora --steps 15 --cuda-graphs
  log "done"
}

graphs() {  # CUDA graph layers against Unsloth: 0.5B in alternating rounds, then 8B; eager last
  header graphs
  prepare qwen05b
  for round in 1 2; do
    log "0.5B round $round: graphs, Unsloth"
    rows --shape qwen05b --mode lora --steps 23 --cuda-graphs
    anchors_05b "_$round"
  done
  prepare llama8b
  log "8B: graphs, Unsloth"
  rows --shape llama8b --mode lora --cuda-graphs
  rows --shape llama8b --mode qlora --cuda-graphs
  anchors_8b
  log "eager A/B"
  rows --shape qwen05b --mode lora --steps 23
  rows --shape llama8b --mode lora
  log "done"
}

verify() {  # every target on the default path at one commit: 0.5B and 8B with their anchors, GPU tests
  header verify
  prepare qwen05b
  log "GPU tests"
  gpu_tests 200 "cuda_graph or fast_path_matches or varlen"
  log "0.5B: finetty, Unsloth"
  rows --shape qwen05b --mode lora --steps 23
  anchors_05b
  prepare llama8b
  log "8B: finetty, Unsloth"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  anchors_8b
  log "0.5B with LoRA dropout 0.05: graphed (the default), eager"
  rows --shape qwen05b --mode lora --steps 23 --lora-dropout 0.05
  rows --shape qwen05b --mode lora --steps 23 --lora-dropout 0.05 --no-graph-dropout
  log "0.5B with LoRA projections one by one (grouped is the default)"
  rows --shape qwen05b --mode lora --steps 23 --no-grouped-lora
  log "done"
}

corners() {  # the defaults not yet measured: graphed dropout, 8B at small micro-batches, grouped LoRA
  header corners
  prepare qwen05b
  log "GPU tests"
  gpu_tests 150 "cuda_graph"
  log "0.5B: LoRA dropout 0.05 graphed (the default) and eager; no dropout, one by one and grouped"
  rows --shape qwen05b --mode lora --steps 23 --lora-dropout 0.05
  rows --shape qwen05b --mode lora --steps 23 --lora-dropout 0.05 --no-graph-dropout
  rows --shape qwen05b --mode lora --steps 23 --no-grouped-lora
  rows --shape qwen05b --mode lora --steps 23
  prepare llama8b
  log "8B at micro-batches 1 and 2, where the auto rule graphs: default, no graphs"
  rows --shape llama8b --mode lora --batch 1 --steps 13
  rows --shape llama8b --mode lora --batch 1 --steps 13 --no-cuda-graphs
  rows --shape llama8b --mode qlora --batch 1 --steps 13
  rows --shape llama8b --mode qlora --batch 1 --steps 13 --no-cuda-graphs
  rows --shape llama8b --mode lora --batch 2 --steps 13
  rows --shape llama8b --mode lora --batch 2 --steps 13 --no-cuda-graphs
  log "8B: Unsloth at micro-batch 1"
  timeout 300 python3 .anc/anchor_bench.py --model-root "$M" --out-dir "$W/anchor_8b_b1" \
    --suite llama8b:unsloth:qlora,llama8b:unsloth:lora --deadline-s 290 \
    --batch 1 --seq 2048 --steps 13 --warmup 3 >> "$W/anchors.log" 2>&1
  cat "$W"/anchor_*/results.jsonl > "$W/anchors.jsonl" 2>/dev/null
  log "8B LoRA at 8 x 2048: one by one, grouped"
  rows --shape llama8b --mode lora --no-grouped-lora
  rows --shape llama8b --mode lora
  log "done"
}

grouping() {  # grouped LoRA as the default: its GPU tests, then 8B QLoRA one by one and grouped
  header grouping
  log "GPU tests"
  gpu_tests 150 "fast_path_matches or cuda_graph"
  prepare llama8b
  log "8B QLoRA: one by one, grouped (the default)"
  rows --shape llama8b --mode qlora --no-grouped-lora
  rows --shape llama8b --mode qlora
  log "done"
}

keeping() {  # 8B QLoRA with and without the kept dequantized weights, micro-batch 1 and 8
  header keeping
  prepare llama8b
  log "8B QLoRA 1 x 2048: kept (the default: host-bound), dequantized again"
  rows --shape llama8b --mode qlora --batch 1 --steps 13
  rows --shape llama8b --mode qlora --batch 1 --steps 13 --no-keep-dequantized
  log "8B QLoRA 8 x 2048: dequantized again (the default from b8aa657), kept"
  rows --shape llama8b --mode qlora --steps 8
  rows --shape llama8b --mode qlora --steps 8 --keep-dequantized
  log "done"
}

probe() {  # diagnosis only, no anchors: profiles, host-device waits and A/B rows
  header probe
  prepare qwen05b
  log "0.5B"
  rows --shape qwen05b --mode lora --steps 23
  rows --shape qwen05b --mode lora --steps 23 --stock-optimizer
  rows --shape qwen05b --mode lora --steps 23 --no-liger-loss
  rows --shape qwen05b --mode lora --steps 8 --sync-check "$W/sync-05b.txt"
  rows --shape qwen05b --mode lora --steps 8 --profile "$W/profile-05b.txt"
  log "8B"
  prepare llama8b
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode qlora --stock-optimizer
  rows --shape llama8b --mode lora --steps 7 --profile "$W/profile-8b-lora.txt"
  rows --shape llama8b --mode lora
  log "done"
}

guards() {  # issue 18's non-finite guards on the card: every GPU test, then the default path with its anchors
  header guards
  prepare qwen05b
  log "GPU tests (all)"
  gpu_tests 330 ""
  log "0.5B: finetty, Unsloth"
  rows --shape qwen05b --mode lora --steps 23
  anchors_05b
  prepare llama8b
  log "8B: finetty, Unsloth"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  anchors_8b
  log "done"
}

layout() {  # issue 19's behaviour-unchanged check after the engine's re-layout: every GPU test, 8B rows and anchors
  header layout
  log "GPU tests (all)"
  gpu_tests 330 ""
  prepare llama8b
  log "8B: finetty, Unsloth"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  anchors_8b
  log "done"
}

lean() {  # layout's check in less device time: every GPU test, the 8B rows, Unsloth's QLoRA anchor
  header lean
  log "GPU tests (all)"
  gpu_tests 300 ""
  prepare llama8b
  log "8B: finetty, Unsloth QLoRA"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  timeout 300 python3 .anc/anchor_bench.py --model-root "$M" --out-dir "$W/anchor_8b" \
    --suite llama8b:unsloth:qlora --deadline-s 290 \
    --batch 8 --seq 2048 --steps 13 --warmup 3 >> "$W/anchors.log" 2>&1
  cat "$W"/anchor_*/results.jsonl > "$W/anchors.jsonl" 2>/dev/null
  log "done"
}

rows19() {  # the least device time for issue 19's check: every GPU test and the 8B rows, no anchor
  header rows19
  log "GPU tests (all)"
  gpu_tests 270 ""
  prepare llama8b
  log "8B: finetty"
  rows --shape llama8b --mode qlora
  rows --shape llama8b --mode lora
  log "done"
}

collect() {
  mkdir -p "$OUT"
  for f in session.log finetty.jsonl anchors.jsonl anchors.log ui.jsonl pytest.log profile-qlora.txt \
    profile-05b.txt profile-8b-lora.txt sync-05b.txt; do
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
    WHAT=${3:-body}  # body: with the UI overhead; final: with packing; alternate: 0.5B turns; grouped: its A/B; check/graphs: CUDA graph layers; verify: every target on the default path; corners: the defaults not yet measured; grouping: grouped LoRA's GPU tests and QLoRA A/B; keeping: the kept dequantized weights' A/B; guards: every GPU test and the default path after the non-finite guards; layout: every GPU test and the 8B rows; lean: the same with only the QLoRA anchor; probe: diagnosis only
    rm -rf "$W"; mkdir -p "$W" "$M"
    export S
    setsid bash -c "$(declare -f log header prepare rows gpu_tests anchors_8b anchors_05b body probe final alternate grouped check graphs verify corners grouping keeping guards layout lean rows19); W=$W M=$M S=$S; $WHAT" > "$W/body.out" 2>&1 < /dev/null &
    follow
    ;;
  follow) follow ;;
  *) echo "usage: bash bench/gpu_session.sh start SESSION_ID [body|final|alternate|grouped|check|graphs|verify|corners|grouping|keeping|guards|layout|lean|rows19|probe] | follow" >&2; exit 2 ;;
esac
