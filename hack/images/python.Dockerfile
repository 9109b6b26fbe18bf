# The Python base of Stampede's images when no registry is reached: the project's Debian base (hack/images.sh
# makes it with debootstrap) with Debian's Python. `make images` passes it to the Dockerfile as PYTHON_IMAGE.
ARG BASE_IMAGE=stampede-debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
