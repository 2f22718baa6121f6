# The operator image: `docker build -t ghcr.io/fleetwarden/operator:0.1.0 .`
# Only the package is copied (never an operator/__init__.py: operator/ is a source root).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

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
