# k6 for the chart's in-cluster load tests (loadTest.image): the binary hack/tools.sh builds from the Go module
# proxy at the pinned version, on the project's Debian base; user 12345 and entrypoint k6, as the chart expects.
ARG BASE_IMAGE=stampede-debian:bookworm
FROM ${BASE_IMAGE}
COPY k6 /usr/bin/k6
USER 12345:12345
WORKDIR /tmp
ENTRYPOINT ["k6"]
