# One image for the gateway and the demo model servers.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
USER 65534:65534
ENTRYPOINT ["switchyard"]
