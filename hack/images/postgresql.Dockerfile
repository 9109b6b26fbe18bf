# PostgreSQL for the chart's bundled ledger (postgresql.image), from Debian's package, with an entrypoint that
# keeps the contract of the official image the chart was written for (POSTGRES_USER/PASSWORD/DB, PGDATA, the
# scripts of /docker-entrypoint-initdb.d on the first start): user postgres is 999, as the chart runs it.
ARG BASE_IMAGE=stampede-debian:bookworm
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown postgres:postgres /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data
COPY postgresql-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER 999:999
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
