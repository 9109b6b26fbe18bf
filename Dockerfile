# Stampede's images: one multi-stage file, one target per component, each installing only its dependency group.
#
#   docker build --target api      -t stampede-api:TAG .       gunicorn + uvicorn workers serving the buy API
#   docker build --target worker   -t stampede-worker:TAG .    procrastinate worker; also `stampede audit`
#   docker build --target operator -t stampede-operator:TAG .  kopf operator; also `stampede migrate`
#
# (`make images` builds all three.) Every image runs as the unprivileged user 10001, writes nothing outside /tmp
# (bytecode is compiled at build time), and so runs with a read-only root filesystem and an emptyDir on /tmp.
# The base image is pinned to an exact Python and Debian release; override PYTHON_IMAGE with a digest-pinned
# reference (python:3.12.11-slim-bookworm@sha256:...) to pin it byte for byte.

ARG PYTHON_IMAGE=docker.io/library/python:3.12.11-slim-bookworm
# The image the virtualenvs are built in: the same Python (the venvs are copied into PYTHON_IMAGE), plus whatever
# the build alone needs, e.g. a CA bundle for a TLS-inspecting proxy (hack/images.sh passes one).
ARG BUILD_IMAGE=${PYTHON_IMAGE}

# --- build: one virtualenv per component, from its lock file in requirements/ ----------------------------------
# Each component's dependencies install from requirements/<component>.txt (exact versions, every file checked
# against its sha256; `make lock` writes them from pyproject.toml), then the project itself with --no-deps and the
# locked setuptools, so nothing is resolved at build time. The lock layer comes before the sources: a change
# of code reuses the cached dependency layer.
FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements ./requirements

FROM build AS deps-api
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --require-hashes -r requirements/api.txt

FROM build AS deps-worker
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --require-hashes -r requirements/worker.txt

FROM build AS deps-operator
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --require-hashes -r requirements/operator.txt

FROM build AS sources
COPY pyproject.toml README.md LICENSE ./
COPY lua ./lua
COPY core ./core
COPY app ./app
COPY worker ./worker
COPY operator ./operator
COPY dev ./dev

FROM deps-api AS build-api
COPY --from=sources /src /src
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM deps-worker AS build-worker
COPY --from=sources /src /src
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM deps-operator AS build-operator
COPY --from=sources /src /src
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

# --- runtime: the slim base, a non-root user, the component's virtualenv -----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN groupadd --system --gid 10001 stampede \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin stampede
WORKDIR /tmp
LABEL org.opencontainers.image.title="stampede" \
      org.opencontainers.image.description="Kubernetes-native flash-sale platform" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS api
COPY --from=build-api /opt/venv /opt/venv
USER 10001:10001
ENV STAMPEDE_BIND=0.0.0.0:8000
EXPOSE 8000
CMD ["gunicorn", "-c", "python:stampede_api.gunicorn_conf", "stampede_api.asgi:app"]

FROM runtime AS worker
COPY --from=build-worker /opt/venv /opt/venv
USER 10001:10001
ENV STAMPEDE_WORKER_METRICS_HOST=0.0.0.0
EXPOSE 9102
CMD ["python", "-m", "stampede_worker"]

FROM runtime AS operator
COPY --from=build-operator /opt/venv /opt/venv
USER 10001:10001
# The chart runs it with --peering, a distinct --priority per replica and the namespaces it watches; this default
# watches every namespace with the peering settings of STAMPEDE_* (see OperatorSettings).
CMD ["kopf", "run", "--module=stampede_operator.main", "--all-namespaces"]
