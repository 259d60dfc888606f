set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p $OUT/new $OUT/old
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 60 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tail -5
echo "=== new kernels"
BENCH_RESULTS_DIR=$OUT/new PYTHONPATH=$PWD timeout 90 python3 bench/bench_topk_kernel.py --repeats 20
echo "=== old kernels (before issue 11)"
BENCH_RESULTS_DIR=$OUT/old PYTHONPATH=$PWD/build/old_kernels timeout 90 python3 bench/bench_topk_kernel.py --repeats 20
