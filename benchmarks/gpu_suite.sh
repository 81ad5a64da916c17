#!/usr/bin/env bash
# What memlm measures on the lent GPU host, in two commands of under 10 minutes each:
#   bash benchmarks/gpu_suite.sh 1    # exact GPU search, decode with knn, long-document perplexity
#   bash benchmarks/gpu_suite.sh 2    # ANN search at 1M hidden states (on the host's CPUs)
#   bash benchmarks/gpu_suite.sh 3    # knn-joint at 64K / 256K / 1M stored tokens (knn_speed.py)
#   bash benchmarks/gpu_suite.sh 4    # what cluster search loses: recall at 256K, perplexity to 128K
# docs/benchmarks.md says how the model, faiss and the corpora get there. Results go to $OUT.
set -uo pipefail
out=${OUT:-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/device.txt"
if [ "${1:-1}" = 1 ]; then
  timeout 100 python3 benchmarks/gpu_search.py --size 1000000 --width 576 > "$out/gpu_search.json" 2> "$out/gpu_search.err"
  timeout 200 python3 benchmarks/decode_speed.py --device cuda --dtype bfloat16 --memory knn --stored 100000 \
    --new-tokens 128 --json > "$out/decode_knn_cuda.json" 2> "$out/decode_knn_cuda.err"
  timeout 250 python3 -m memlm.cli eval ppl --corpus gutenberg/milton/areopagitica --window 256 --device cuda \
    --dtype float32 --memory knn-joint,knn-lm,knn-joint-lm --reference-context 2048 --json \
    > "$out/ppl_areopagitica_cuda.json" 2> "$out/ppl.err"
elif [ "${1:-1}" = 3 ]; then
  timeout 585 python3 benchmarks/knn_speed.py --device cuda --dtype bfloat16 --sizes 65536,262144,1048576 \
    --backends "${KNN_BACKENDS:-torch:clusters,torch:exact}" --repeats 2 --budget "${KNN_BUDGET:-550}" \
    --out "$out/knn_speed_gpu.json" > "$out/knn_speed.log" 2>&1
elif [ "${1:-1}" = 4 ]; then
  timeout 250 python3 benchmarks/cluster_recall.py --device cuda --dtype bfloat16 --stored 262144 \
    --settings "${RECALL_SETTINGS:-32:64,32:128,64:64,32:256}" \
    --out "$out/cluster_recall_gpu.json" > "$out/cluster_recall.log" 2>&1
  timeout 320 python3 benchmarks/cluster_ppl.py --device cuda --dtype bfloat16 --corpus pg-essays --window 1024 \
    --max-tokens 131072 --settings "${PPL_SETTINGS:-default,32:128}" \
    --out "$out/cluster_ppl_gpu.json" > "$out/cluster_ppl.log" 2>&1
else
  timeout 560 python3 benchmarks/index_search.py --sizes 1000000 --data hidden --device cuda --queries 100 \
    --out "$out/index_1m_hidden.json" > "$out/index_1m_hidden.log" 2>&1
fi
tail -n 4 "$out"/*.err "$out"/*.log 2>/dev/null
