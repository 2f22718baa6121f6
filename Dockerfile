# The operator image: `docker build -t ghcr.io/fleetwarden/operator:0.1.0 .`
# (.github/workflows/release.yml builds it for linux/amd64 and linux/arm64, with an SBOM, and
# signs it). Only the package is copied (never an operator/__init__.py: operator/ is a source root).
FROM python:3.11-slim

# The release version: fleetwarden.__version__, the chart's appVersion and the image tag in
# manifests/kustomization.yaml (tests/unit/test_release.py checks they agree).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fleetwarden-operator" \
      org.opencontainers.image.description="A Kubernetes operator that governs fleets of AI agents by budget" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/fleetwarden/fleetwarden" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# jemalloc as the operator's malloc (Debian's libjemalloc2), with every Python object in it
# (PYTHONMALLOC=malloc, not Python's own arenas): at 10,000 budgets glibc's malloc held 160-210 MiB
# freed but not given back and Python's arenas 90-150 MB free; on jemalloc RSS was 490-500
# MiB against 580 (docs/operator.md, Scale: "jemalloc"). The link gives one path on amd64 and arm64;
# /metrics names the malloc in use (fleetwarden_operator_malloc_info). Unset both to run on glibc's.
# One jemalloc arena, not four per core: the operator's 40-odd threads allocate while holding the
# GIL, so they hardly contend, and eight arenas each kept partly used pages of their own; at
# 10,000 budgets RSS was 452-459 MiB with one against 525-535 with eight (docs/operator.md, Scale:
# "One jemalloc arena"). /metrics shows it took effect (fleetwarden_operator_jemalloc_arenas).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2)" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    PYTHONMALLOC=malloc \
    MALLOC_CONF=narenas:1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/fleetwarden ./operator/fleetwarden
RUN pip install ".[operator,fast]" \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin fleetwarden

WORKDIR /
USER 10001:10001
# 8080: the liveness endpoint (/healthz, kopf's once leading); 9102: the operator's /metrics.
EXPOSE 8080 9102
ENTRYPOINT ["fleetwarden", "operator", "--all-namespaces", "--leader-elect", "--lease-name=fleetwarden-operator", "--liveness=http://0.0.0.0:8080/healthz"]
