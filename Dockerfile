# berth's container image: one image for every component (node plugin, controllers, both
# drivers). Build from the repository root:
#   docker build -t registry.example.com/berth:0.1.0 .
#
# Stage 1 compiles the release binary with the locked dependencies (the same
# `cargo build --locked` CI uses). Dependencies are compiled in their own layer, against
# stub sources, so a change to berth's code rebuilds only berth.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Dependency layer: the manifests, the lockfile, the build script and the protocol it
# compiles, with stub crate roots. Rebuilt only when these files change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# berth itself. Touch the crate roots so cargo sees them newer than the stub build.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/berth /usr/local/bin/berth \
    && /usr/local/bin/berth version

# Stage 2: only what berth runs, for block and device pools: mkfs.ext4, e2fsck and
# resize2fs (e2fsprogs), mkfs.xfs and xfs_growfs (xfsprogs), mkfs.btrfs and btrfs
# (btrfs-progs), blkid and wipefs (util-linux), mount and umount (mount).
FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim

# VERSION equals the crate version in Cargo.toml (the chart test checks it); pass the
# repository's URL as SOURCE_URL when publishing (--build-arg SOURCE_URL=...).
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="A Kubernetes CSI driver: hostPath, block and NFS volumes with enforced sizes, snapshots and expansion" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"

# Package versions come from the pinned Debian release; pinning each one would break the
# build at every Debian security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        btrfs-progs \
        e2fsprogs \
        mount \
        util-linux \
        xfsprogs \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /usr/local/bin/berth /usr/local/bin/berth

# The node plugin mounts filesystems, attaches loop devices and sets quotas, so the image
# runs as root; the chart runs the central controllers as user 65532 with a read-only
# root filesystem instead.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
