# aotwatch: the daemon (`aotwatch serve` beside a Ray cluster), job drivers (`aotwatch run
# JOB.yaml`) and, with `--entrypoint ray`, Ray nodes that have aotwatch installed.
# Build from the repository root:  docker build -t aotwatch:0.1.0 .
# A Ray driver must run the Python minor version and the Ray version of its cluster: set
# PYTHON_VERSION and RAY_VERSION to the cluster's (--build-arg RAY_VERSION=2.60.0).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# torch from PyPI is, on Linux x86_64, the CUDA build: the one GPU nodes want. The CPU build:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG RAY_VERSION=2.60.0
# aotwatch's extras, comma-separated, at least one: `train` (Ray Train) runs the jobs that
# name an entrypoint.
ARG AOTWATCH_EXTRAS=train

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    AOTWATCH_HEALTHCHECK_URL=http://127.0.0.1:9419/healthz

# /tmp/ray (Ray's session files) and /var/lib/aotwatch (collector archives) belong to the user,
# so that volumes mounted there start writable.
RUN groupadd --gid 10001 aotwatch \
    && useradd --no-log-init --create-home --uid 10001 --gid aotwatch aotwatch \
    && install -d -o aotwatch -g aotwatch /tmp/ray /var/lib/aotwatch

# torch first, in its own layer: it is the largest and changes least often.
WORKDIR /opt/aotwatch
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install "ray==${RAY_VERSION}" "./[${AOTWATCH_EXTRAS}]"
# The default config and the example jobs, every key commented.
COPY config /etc/aotwatch

USER 10001:10001
WORKDIR /home/aotwatch

# 9419: the node's collector (/metrics, /healthz, /readyz); 9417: the head (rank divergences);
# 9420: /metrics of a process traced in local mode (`aotwatch trace`).
EXPOSE 9419 9417 9420

# Healthy while the collector of the container's node answers /healthz. `aotwatch serve` is a
# Ray driver: the collectors are Ray actors on the nodes, so this holds when the container
# shares a Ray node's network (--network host on a Ray node, or this image running the node).
# Another port, or https:// when collector.web_config turns TLS on: set AOTWATCH_HEALTHCHECK_URL.
# /healthz needs no password; the check talks to loopback and does not verify the certificate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; urllib.request.urlopen(os.environ['AOTWATCH_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]

ENTRYPOINT ["aotwatch"]
CMD ["serve"]
