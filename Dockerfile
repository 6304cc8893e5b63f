# syntax=docker/dockerfile:1
# llm-sidecar image: the sidecar (`serve`, the default) and the injection webhook
# (`inject-webhook ...`). Build: docker build -t llm-sidecar:0.1.0 .
# The build stage's RUN steps are replayed without Docker by tests/k8s/test_dockerfile.py,
# which substitutes its own paths for /opt/llm-sidecar and /tmp/wheels: keep them literal.

FROM python:3.12.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Dependencies first, from the lock alone, so code changes reuse this layer.
COPY requirements.lock ./
RUN python -m venv /opt/llm-sidecar \
    && /opt/llm-sidecar/bin/pip install --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY auth ./auth
# --no-deps everywhere: the lock is the whole dependency set; pip check proves it is.
RUN /opt/llm-sidecar/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/llm-sidecar/bin/pip install --no-deps /tmp/wheels/llm_sidecar-*.whl \
    && /opt/llm-sidecar/bin/pip check \
    && /opt/llm-sidecar/bin/llm-sidecar --help \
    && /opt/llm-sidecar/bin/pip uninstall --yes pip


FROM python:3.12.12-slim-bookworm
LABEL org.opencontainers.image.title="llm-sidecar" \
      org.opencontainers.image.description="LLM egress sidecar: auth, rate limits, circuit breakers, tracing, metrics" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so runAsNonRoot can verify it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 llm-sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/llm-sidecar --shell /usr/sbin/nologin llm-sidecar \
    && mkdir -p /var/lib/llm-sidecar \
    && chown 10001:10001 /var/lib/llm-sidecar

COPY --from=build /opt/llm-sidecar /opt/llm-sidecar

# The root filesystem is read-only in Kubernetes: the SQLite default lives on the data
# volume. LLM_SIDECAR_HOST stays at its loopback default: a sidecar serves its own pod.
ENV PATH=/opt/llm-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLM_SIDECAR_DATABASE_URL=sqlite:////var/lib/llm-sidecar/users.db
WORKDIR /var/lib/llm-sidecar
VOLUME ["/var/lib/llm-sidecar"]
USER 10001:10001

# 8080: traffic (loopback only by default); 9464: ops (/healthz, /readyz, /metrics).
# The webhook listens on 8443 when started with `inject-webhook`.
EXPOSE 8080 9464
ENTRYPOINT ["llm-sidecar"]
CMD ["serve"]
