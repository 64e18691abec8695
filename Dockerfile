# One image for every newsq service. The base carries a CUDA build of PyTorch, so the GPU workers
# use it as is (newsq asks only for torch>=2.2); on a CPU-only host the same image runs on CPU.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsq ./newsq
COPY producer ./producer
COPY worker ./worker
COPY db ./db
RUN pip install .

# Prometheus (per worker) and Flower.
EXPOSE 9808 5555
CMD ["newsq", "worker", "--gpus", "all"]
