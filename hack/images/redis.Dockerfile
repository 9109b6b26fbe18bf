# Redis for the chart's bundled datastore (redis.image), from Debian's package: user redis is 999, as the chart's
# securityContext runs it; the chart gives the command (redis-server) and every setting.
ARG BASE_IMAGE=stampede-debian:bookworm
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid 999 --home-dir /data --no-create-home --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
WORKDIR /data
USER 999:999
EXPOSE 6379
CMD ["redis-server"]
