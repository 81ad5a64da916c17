#!/usr/bin/env bash
# The `chat` preset on the lent GPU host: train it, ship it (bfloat16, with its config, log and curves)
# and compare it with the untrained prompt fusion (`bank`) on 3 seeds. Set-up as for gpu_eval.sh:
#   run(carry=[".whl"],  "bash benchmarks/gpu_eval.sh wheels")    needs chitchat-dataset-0.9.0 in .whl/
#   run(carry=[".mini"], "bash benchmarks/gpu_eval.sh minilm")    MiniLM, for the bank's retrieval (eval)
#   ../shared/gpu/stage 0, run("bash .gpu/setup.sh"), ../shared/gpu/stage 1, then at once
#   run("bash .gpu/setup.sh && source .gpu/env.sh && bash benchmarks/gpu_chat.sh train")   (~8.5 min)
#   run("source .gpu/env.sh && bash benchmarks/gpu_chat.sh eval")                          (~9 min)
# Results ($OUT): chat-run.tgz (runs/chat without checkpoints, and src/memlm/presets/chat: unpack it at
# the project's root and commit the preset folder), train.log; chat-<system>-<seed>.json and their logs.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" runs
export PYTHONPATH=$PWD/src:/tmp/site2:${PYTHONPATH:-} MEMLM_CACHE=/tmp/mcache MEMLM_HOME=/tmp/mhome \
  MEMLM_MINILM=${MEMLM_MINILM:-/tmp/minilm} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
backbone=/tmp/SmolLM2-135M-Instruct
preset=src/memlm/presets/chat

prepare() {  # the converted model once (later processes load it in seconds)
  [ -d "$backbone" ] || python3 -c "import memlm; m, t = memlm.load_backbone(); m.save_pretrained('$backbone'); \
t.save_pretrained('$backbone')"
  nvidia-smi -L | tee "$out/device.txt"
}

ship() {  # runs/chat/final -> the preset folder: weights in bfloat16, the training config, log and curves
  python3 - "$backbone" "$preset" <<'EOF'
import shutil, sys
from pathlib import Path
import torch, memlm
from memlm.serialization import read_json
backbone, preset = sys.argv[1], Path(sys.argv[2])
model, tokenizer = memlm.load_backbone(backbone)
trained = memlm.MemoryModel.from_pretrained(model, "runs/chat/final", tokenizer=tokenizer)
extra = read_json(Path("runs/chat/final/memlm_config.json"))["extra"]
trained.save_pretrained(preset, dtype=torch.bfloat16, extra=extra)
for name in ("log.csv", "eval.csv", "curves.png"):
    if Path("runs/chat", name).exists():
        shutil.copy(Path("runs/chat", name), preset / name)
print("shipped", preset, (preset / "memory_weights.safetensors").stat().st_size, "bytes")
EOF
}

case "${1:?usage: gpu_chat.sh train|eval}" in
  train)
    prepare
    timeout 540 python3 -m memlm.cli train --config configs/train/chat.yaml --output runs/chat --device cuda \
      --backbone "$backbone" > "$out/train.log" 2>&1
    tail -c 2500 "$out/train.log"
    ship
    tar czf "$out/chat-run.tgz" --exclude='checkpoint-*' --exclude='tensorboard' runs/chat "$preset" ;;
  eval)
    prepare
    [ -f "$preset/memory_weights.safetensors" ] || ship
    # One process per (system, seed): decoding the 135M model is latency-bound, the GPU has room.
    for system in ${SYSTEMS:-bank chat}; do
      for seed in ${SEEDS:-0 1 2}; do
        OMP_NUM_THREADS=2 timeout "${EVAL_SECONDS:-560}" python3 -m memlm.cli eval chat --systems "$system" \
          --seeds "$seed" --continual "${FACTS:-1000}" --device cuda --dtype float32 --backbone "$backbone" \
          -o "$out/chat-$system-$seed.json" > "$out/chat-$system-$seed.log" 2>&1 &
        sleep 3
      done
    done
    wait
    for log in "$out"/chat-*.log; do echo "== $log"; grep -a -A6 "chat quality" "$log" | tail -n 5; done ;;
esac
