# Images of the operator and the aggregator: static musl binaries on distroless, non-root.
#
#   docker build --target operator   -t ghcr.io/metrics-pipeline/metrics-pipeline-operator:dev .
#   docker build --target aggregator -t ghcr.io/metrics-pipeline/metrics-aggregator:dev .
#
# Both targets share one build stage, so building both compiles the workspace once.
FROM rust:1.94-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq musl-tools >/dev/null && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p metrics-pipeline-operator -p metrics-aggregator --bin metrics-pipeline-operator --bin metrics-aggregator \
    && mkdir /out && cp target/x86_64-unknown-linux-musl/release/metrics-pipeline-operator target/x86_64-unknown-linux-musl/release/metrics-aggregator /out/

FROM gcr.io/distroless/static-debian12:nonroot AS aggregator
COPY --from=build /out/metrics-aggregator /usr/local/bin/metrics-aggregator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["metrics-aggregator"]
CMD ["run"]

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/metrics-pipeline-operator /usr/local/bin/metrics-pipeline-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["metrics-pipeline-operator"]
