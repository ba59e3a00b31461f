# The COVIDNet project image (CPU): every Kubeflow component runs in it (src/covidnet/kfp/components/stages.py: IMAGE).
#   docker build -t REGISTRY/covidnet:0.1.0 . && docker push REGISTRY/covidnet:0.1.0
# Not built or tested here: this machine has no Docker daemon (see pipelines/README.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/covidnet

# torch first, pinned (an unpinned torch pulled in by another package could be another build). The default
# index's Linux wheel bundles CUDA and runs on CPUs too; for a much smaller CPU-only image, pass PyTorch's
# CPU wheel index: docker build --build-arg TORCH_INDEX_URL=<CPU wheel index URL> ...
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md params.yaml ./
COPY src ./src
RUN pip install --no-deps .

# Components are given their params as text; a run's working folder is its own.
WORKDIR /work
CMD ["covidnet", "--help"]
