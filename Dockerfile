# The manager image for users with Docker (and the release workflow, which builds it for
# linux/amd64 and linux/arm64 with buildx). `make image` builds the same binary and layout
# without a Docker engine on a scratch base with the build machine's CA bundle; see
# docs/getting-started.md ("The manager image").
ARG GO_VERSION=1.26
ARG BASE_IMAGE=gcr.io/distroless/static:nonroot

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS builder
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG GIT_COMMIT=unknown
WORKDIR /workspace
# Dependencies first, so source edits reuse the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false \
      -ldflags "-s -w -buildid= -X main.version=${VERSION} -X main.gitCommit=${GIT_COMMIT}" \
      -o /out/manager .

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="cluster-api-provider-proxmox-talos" \
      org.opencontainers.image.description="Cluster API infrastructure provider: Talos Linux clusters on Proxmox VE" \
      org.opencontainers.image.source="https://github.com/proxmox-talos/cluster-api-provider-proxmox-talos" \
      org.opencontainers.image.url="https://github.com/proxmox-talos/cluster-api-provider-proxmox-talos" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static:nonroot"
WORKDIR /
COPY --from=builder /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
