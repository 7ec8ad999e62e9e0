# Container image of the dispatcher: runs `dispatcher worker` as uid 10001, health and metrics on
# port 8000. All settings come from the environment (docs/settings.md).
#
#   docker build -t k8s-job-dispatcher:0.1.0 .      # any machine with Docker (or podman build)
#   make image                                      # here: podman, local base image, no registry
#
# BASE_IMAGE names Debian 12 slim by tag. Production builds should pin it by digest, e.g.
#   docker build --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim@sha256:<digest> .
# Both stages must use the same base: the venv's python is a link to the base's /usr/bin/python3.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---- builder: a venv at /opt/venv with the package, its worker extra, exactly as locked -----
FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# PyPI is reached over TLS checked against Debian's CA store, so a build behind a TLS-inspecting
# proxy needs only its CA in /usr/local/share/ca-certificates/ (stack/build-image.sh mounts it).
ENV UV_SYSTEM_CERTS=1
# uv only in this stage, in a venv of its own (Debian's python3 is externally managed).
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
# Without pip: the venv holds the locked packages and nothing else (uv sync does not remove pip).
RUN python3 -m venv --without-pip /opt/venv
WORKDIR /src
# Dependencies first, exactly as uv.lock pins them: this layer is reused until the lock changes.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --extra worker --no-install-project --no-editable
# Then the package itself, built as a wheel and installed (not editable: /src is not shipped).
COPY README.md ./
COPY src ./src
RUN /opt/uv/bin/uv sync --frozen --no-dev --extra worker --no-editable \
 && /opt/venv/bin/dispatcher --help >/dev/null

# ---- runtime: the base, Debian's python3 and the venv; no pip, compilers or apt lists --------
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
           /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log \
 && groupadd --gid 10001 dispatcher \
 && useradd --uid 10001 --gid dispatcher --home-dir /nonexistent --no-create-home --no-log-init \
            --shell /usr/sbin/nologin dispatcher
COPY --from=builder /opt/venv /opt/venv
# Bytecode was compiled in the builder; the code is read-only to the process (readOnlyRootFilesystem).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["/opt/venv/bin/dispatcher"]
CMD ["worker"]

# Last, so that a new version or commit changes only the image config, never a layer.
ARG BASE_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="k8s-job-dispatcher" \
      org.opencontainers.image.description="Run a container as a Kubernetes Job from a RabbitMQ message and get its logs and exit code back." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
