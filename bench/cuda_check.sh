#!/usr/bin/env bash
# The CUDA backend on a real GPU, in one go: its tests, then timed epochs.
#
#   bash bench/cuda_check.sh OUT_DIR
#
# For a GPU machine that may be offline: installs this checkout (editable, no
# dependencies fetched: numpy, numba, numba-cuda, scipy, threadpoolctl, tqdm,
# matplotlib, pillow and pytest must be there already), then
#   1. runs tests/cuda on the GPU (the same tests CI runs under the CUDA simulator);
#   2. writes a CIFAR-10-shaped dataset of random images (50,000 train + 10,000
#      test, official layout) -- the real data need not be on that machine; the
#      epoch times are those of real data, the accuracies mean nothing;
#   3. trains 3 epochs with --backend cuda at the reference batch of 32 (epoch 1
#      includes the kernels' JIT compile), then 1 epoch at batch 256; then the
#      same two batch sizes with --backend parallel on all the machine's cores,
#      for scale (1 epoch each).
# Wheels in .whl/ (e.g. a numpy that the machine's numba-cuda supports) are installed
# first, ahead of the machine's own packages.
# Everything it prints is also written to OUT_DIR (machine.txt, cuda_tests.log,
# train_<run>.log for the four runs, and the first run's metrics.jsonl).
set -uo pipefail
out=${1:?usage: bash bench/cuda_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/scratchcnn-numba-cache}
data=/tmp/scratchcnn-random-cifar

if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/scratchcnn-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/scratchcnn-site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  nvidia-smi -L
  $py -c "import sys, numpy, numba, numba_cuda, scipy
print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| numba',
      numba.__version__, '| numba-cuda', numba_cuda.__version__, '| scipy', scipy.__version__)"
  echo "cpu cores: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
} 2>&1 | tee "$out/machine.txt"

$py -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1

echo "== tests/cuda on the GPU"
timeout 300 $py -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tee "$out/cuda_tests.log"

$py -c "import sys; sys.path.insert(0, 'tests')
from conftest import write_fake_cifar_files
write_fake_cifar_files('$data', n=10000)" || exit 1

rm -rf /tmp/scratchcnn-run-*
train() {  # name, then the CLI's flags
  local name=$1; shift
  echo "== $name: $*"
  timeout 300 $py -m scratchcnn.train --data-dir "$data" --no-progress \
    --out "/tmp/scratchcnn-run-$name" "$@" 2>&1 | tee "$out/train_$name.log"
}
train cuda --backend cuda --epochs 3
train cuda-b256 --backend cuda --epochs 1 --batch-size 256
train parallel --backend parallel --threads "$(nproc)" --epochs 1
train parallel-b256 --backend parallel --threads "$(nproc)" --epochs 1 --batch-size 256
cp /tmp/scratchcnn-run-cuda/metrics.jsonl "$out/metrics_cuda.jsonl" 2>/dev/null
exit 0
