# The COVIDNet project image (CPU): every Kubeflow component runs in it (params.yaml: pipeline.image.cpu) and
# KServe serves from it (`python -m covidnet.serve.kserve_model --model_dir /mnt/models`).
#
#   docker build -t REGISTRY/covidnet:0.1.0 .                  # on a machine that reaches Docker Hub and PyPI
#   bash scripts/images.sh                                     # here: local Debian base, offline from a wheelhouse
#
# Build arguments:
#   BASE_IMAGE   an image with Python 3.11 (python3), or a bare Debian bookworm to which python3 and git are added
#   WHEELHOUSE   a folder of wheels mounted into the build (podman/buildah: -v DIR:/wheelhouse:ro): every Python
#                package then comes from it (--no-index), as an air-gapped cluster needs; empty = PyPI
#   TORCH_INDEX_URL  another PyTorch wheel index for torch (without a wheelhouse); empty = PyPI's
#   GIT_COMMIT, VERSION  recorded in the image's labels (scripts/images.sh passes them)
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 LANG=C.UTF-8 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# python3 (3.11) with venv, and git (fetch_cohort's `dvc get`): installed only when the base lacks them.
RUN set -eux; pkgs=""; \
    command -v git >/dev/null 2>&1 || pkgs="$pkgs git"; \
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs="$pkgs python3 python3-venv"; \
    if [ -n "$pkgs" ]; then \
      apt-get update; apt-get install -y --no-install-recommends $pkgs ca-certificates; rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, the base has {sys.version}"'; \
    python3 -m venv "$VIRTUAL_ENV"

# The package as a wheel, built from the sources (the runtime stage installs that wheel, not the source tree).
FROM python AS wheel
ARG WHEELHOUSE=""
WORKDIR /src
COPY pyproject.toml README.md params.yaml ./
COPY src ./src
RUN pip wheel --no-deps -w /dist ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} .

FROM python
ARG WHEELHOUSE=""
ARG TORCH_INDEX_URL=""
RUN pip install ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} pip==24.3.1
# torch first, pinned and alone: a torch pulled in by another package could be another (multi-GB CUDA) build.
RUN if [ -n "$WHEELHOUSE" ]; then pip install --no-index --find-links "$WHEELHOUSE" torch==2.13.0; \
    else pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0; fi
# The package's own dependencies (pyproject.toml), at the lock's versions; the lock's test and benchmark
# packages stay out. A layer of its own: a change of the sources does not reinstall them.
COPY pyproject.toml requirements.lock /opt/covidnet/
RUN python -c "import tomllib; print(*tomllib.load(open('/opt/covidnet/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /opt/covidnet/requirements.txt \
    && pip install ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} -c /opt/covidnet/requirements.lock \
      -r /opt/covidnet/requirements.txt
COPY --from=wheel /dist/ /opt/covidnet/dist/
RUN pip install --no-deps --no-index /opt/covidnet/dist/covidnet-*.whl && pip check

# `covidnet ARGS` (docker run IMAGE train ..., IMAGE --help), unless the first argument is a program: then that
# program, which is what Kubernetes does with a container's command (KFP's `sh -c ...`, KServe's `python -m ...`).
RUN printf '%s\n' '#!/bin/sh' \
      'if [ "$#" -gt 0 ] && command -v "$1" >/dev/null 2>&1; then exec "$@"; fi' \
      'exec covidnet "$@"' > /usr/local/bin/covidnet-entrypoint \
    && chmod 755 /usr/local/bin/covidnet-entrypoint \
    && useradd --uid 1000 --create-home --shell /bin/sh covidnet \
    && mkdir -p /work /mnt/models && chown covidnet:covidnet /work

USER 1000:1000
WORKDIR /work
EXPOSE 8080
# The KServe server's readiness (V2 health); a component container has no server and reads unhealthy, harmlessly.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4).status != 200)"]
ENTRYPOINT ["covidnet-entrypoint"]
CMD ["--help"]

ARG GIT_COMMIT=unknown
ARG VERSION=0.1.0
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="covidnet" \
      org.opencontainers.image.description="COVIDNet MLOps: the Kubeflow components and the KServe model server (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"
