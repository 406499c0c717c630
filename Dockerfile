# Build: docker build -t memoji-worker .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The benchmark tool is a workspace member: cargo reads its manifest, never builds it here.
COPY bench ./bench
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin memoji-worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/memoji memoji && mkdir -p /var/lib/memoji/images && chown memoji /var/lib/memoji/images
COPY --from=build /src/target/release/memoji-worker /usr/local/bin/memoji-worker
USER memoji
WORKDIR /var/lib/memoji
ENV MEMOJI__STORAGE__LOCAL_DIR=/var/lib/memoji/images \
    MEMOJI__HTTP__BIND=0.0.0.0:8080 \
    MEMOJI__LOG__FORMAT=json
EXPOSE 8080
ENTRYPOINT ["memoji-worker"]
CMD ["run"]
