# The build stage's image (the Dockerfile's BUILD_IMAGE): the Python base plus the CA bundle of the building host,
# which pip uses to fetch the locked packages. Only the virtualenvs built here reach the runtime images.
ARG BASE_IMAGE=stampede-python:3.11-bookworm
FROM ${BASE_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/build-ca-bundle.crt
ENV PIP_CERT=/etc/ssl/certs/build-ca-bundle.crt
