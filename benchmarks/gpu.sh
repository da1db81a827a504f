#!/bin/bash
# The GPU checks, as one script for a CUDA machine (run from the repository root; results in
# $OUT, default ./gpu-out): CUDA tests, the scan benchmark on the GPU, the layer benchmark on
# the GPU (rnnkit.cuda_graphed as one more contestant). Each stage has its own time limit so a
# slow one cannot hide the others; together they fit one 10-minute device call (560 s).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 240 python3 -m pytest tests/test_cuda.py tests/test_cuda_graphs.py tests/test_cuda_train.py tests/test_cuda_numerics.py -q -p no:cacheprovider -rfE 2>&1 | tee "$OUT/test_cuda.log"
timeout 100 python3 benchmarks/scan.py --device cuda --ts 128,512,1024,2048,4096,8192 --repeat 5 \
    --loop-max-t 512 --slow-max-t 8192 --memory --plot "$OUT/scan_cuda.png" --json "$OUT/scan_cuda.json" \
    2>&1 | tee "$OUT/scan_cuda.log"
timeout 150 python3 benchmarks/layers.py --device cuda --graphs --shapes medium,large --repeat 5 \
    --cases lstm,gru,lstm+weight_drop,lstm+recurrent_dropout,lstm+zoneout,lstm-peephole,lstm-layernorm,gru-layernorm,lstm-batchnorm \
    2>&1 | tee "$OUT/layers_cuda.log"
timeout 90 python3 benchmarks/graphs_train.py 2>&1 | tee "$OUT/graphs_train.log"
