# berth's container image: one image for every component (node plugin, controllers, both
# drivers), for linux/amd64 and linux/arm64. Build from the repository root:
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t registry.example.com/berth:0.1.0 --push .
# or, for the build machine's own platform only, docker build -t berth:0.1.0 .
#
# builder  runs on the build machine's platform ($BUILDPLATFORM) and cross-compiles the
#          release binary for the target's ($TARGETARCH) with the locked dependencies (the
#          same `cargo build --release --locked` CI uses). Dependencies are compiled in
#          their own layer, against stub sources, so a change to berth's code rebuilds
#          only berth.
# tools    runs on the target platform (emulated when it is not the build machine's):
#          installs the Debian packages of the filesystem tools and copies out only the
#          programs berth runs, with their libraries (image/tools, image/packages,
#          image/programs; docs/image.md has the sizes). scripts/kube-cluster builds its
#          image from the same three files.
# the image: Debian slim, the tools, the binary.

# The base images, pinned by the digest of each tag's multi-platform index.
# scripts/update-image-pins resolves the tags again and rewrites these two lines.
ARG RUST_IMAGE=docker.io/library/rust:1.98-slim-trixie@sha256:8ce659250d9f7783105e69af45d78c0b2308bf78bd5640182986944efe3a4579
ARG DEBIAN_IMAGE=docker.io/library/debian:trixie-slim@sha256:3a39a0592364683e6bab97937b72cad5a8fa6dcbbee90edb3bb48c7f8e94f258

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder
ARG TARGETARCH
WORKDIR /build

# The target's Rust standard library and, when the target is not the build machine, a C
# cross linker with the target's C library, from Debian. Cargo finds the linker by the
# target's name; for a native build the same name is the machine's own gcc.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# Package versions come from the pinned Debian release; pinning each one would break the
# build at every Debian security update.
# hadolint ignore=DL3008
RUN set -eu; \
    case "$TARGETARCH" in \
        amd64) rust_target=x86_64-unknown-linux-gnu; gcc='gcc-x86-64-linux-gnu' ;; \
        arm64) rust_target=aarch64-unknown-linux-gnu; gcc='gcc-aarch64-linux-gnu' ;; \
        *) echo "TARGETARCH=$TARGETARCH: berth's image is built for amd64 and arm64" >&2; exit 1 ;; \
    esac; \
    echo "$rust_target" >/rust-target; \
    if [ "$TARGETARCH" != "$(dpkg --print-architecture)" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends "$gcc" "libc6-dev-$TARGETARCH-cross"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    rustup target add "$rust_target"

# Dependency layer: the manifests, the lockfile, the build script and the protocol it
# compiles, with stub crate roots. Rebuilt only when these files change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "$(cat /rust-target)" \
    && rm -rf src

# berth itself. Touch the crate roots so cargo sees them newer than the stub build. The
# binary runs here only when it was built for this machine.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "$(cat /rust-target)" \
    && cp "target/$(cat /rust-target)/release/berth" /berth \
    && if [ "$TARGETARCH" = "$(dpkg --print-architecture)" ]; then /berth version; fi

# The filesystem tools berth runs for block and device pools (image/programs) and the
# libraries they load, without the rest of their packages: xfsprogs alone depends on 68 MB
# of python3, python3-dbus with glib, and libicu, for xfs_scrub and xfs_scrub_all, which
# berth never runs.
FROM ${DEBIAN_IMAGE} AS tools
COPY image/ /image/
RUN /image/tools snapshot /image/base.list \
    && /image/tools install \
    && /image/tools collect /image/base.list /out

FROM ${DEBIAN_IMAGE}

# VERSION equals the crate version in Cargo.toml (the chart test checks it); pass the
# repository's URL as SOURCE_URL when publishing (--build-arg SOURCE_URL=...).
ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG DEBIAN_IMAGE
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="A Kubernetes CSI driver: hostPath, block and NFS volumes with enforced sizes, snapshots and expansion" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="${DEBIAN_IMAGE}"

COPY --from=tools /out/ /
COPY --from=builder /berth /usr/local/bin/berth

# The node plugin mounts filesystems, attaches loop devices and sets quotas, so the image
# runs as root; the chart runs the central controllers as user 65532 with a read-only
# root filesystem instead.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
