# Images of the operator and the aggregator for registries: glibc binaries (release profile) on
# distroless/cc, user 65532. scripts/build-images makes the same images on a machine without
# Docker (same user, entrypoint, command, working directory, environment and file layout), from
# the test build's binaries and the machine's own libraries (README: "Images").
#
#   docker build --target operator   -t ghcr.io/metrics-pipeline/metrics-pipeline-operator:dev .
#   docker build --target aggregator -t ghcr.io/metrics-pipeline/metrics-aggregator:dev .
#
# Both targets share one build stage, so building both compiles the workspace once. The build
# image is Debian bookworm, as is the base: the binaries link the glibc they run with.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p metrics-pipeline-operator -p metrics-aggregator \
      --bin metrics-pipeline-operator --bin metrics-aggregator \
    && mkdir /out && cp target/release/metrics-pipeline-operator target/release/metrics-aggregator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS aggregator
COPY --from=build /out/metrics-aggregator /usr/local/bin/metrics-aggregator
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080
ENTRYPOINT ["metrics-aggregator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/metrics-pipeline-operator /usr/local/bin/metrics-pipeline-operator
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080
ENTRYPOINT ["metrics-pipeline-operator"]
