# syntax=docker/dockerfile:1
# A static operator binary on a distroless base, running as non-root.
# The binary is linked statically against glibc (crt-static): TLS is rustls,
# and the in-cluster API server address is an IP, so no NSS lookup is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
ENV RUSTFLAGS="-C target-feature=+crt-static"
# --no-default-features leaves out the local control plane and node simulator
# (the `demo` and test support), which a cluster never needs.
RUN cargo build --release --locked --no-default-features --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/sidecar-migrator /sidecar-migrator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /sidecar-migrator /sidecar-migrator
USER 65532:65532
ENTRYPOINT ["/sidecar-migrator"]
CMD ["run"]
