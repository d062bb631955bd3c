#!/usr/bin/env bash
# Build and push the multi-architecture functionfuse images with docker buildx: what the
# release workflow (.github/workflows/release.yml) runs on a version tag. The local
# release (`functionfuse release`, `make release`) builds the same Dockerfiles with the
# classic builder for the machine's own architecture; tags and labels are the same.
#
#   scripts/release-images-buildx.sh REGISTRY            # e.g. ghcr.io/functionfuse
#
# Environment:
#   PLATFORMS     linux/amd64,linux/arm64 (default)
#   BASE_IMAGE    FROM of the base image (default python:3.11-slim)
#   PYTHON_TAG    py3XX of BASE_IMAGE (default: read from a python:3.X-slim name, else py311)
#   SOURCE_DATE_EPOCH  the time stamped into the images (default: the commit time)
#   DRY_RUN=1     print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${1:?usage: $0 REGISTRY   (host[:port]/namespace)}
REGISTRY=${REGISTRY#oci://}
REGISTRY=${REGISTRY%/}
PLATFORMS=${PLATFORMS:-linux/amd64,linux/arm64}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
PY=${PYTHON:-python3}

VERSION=$("$PY" -c 'import runpy; print(runpy.run_path("functionfuse/_version.py")["__version__"])')
if [ -z "${PYTHON_TAG:-}" ]; then
    if [[ "$BASE_IMAGE" =~ python:3\.([0-9]+) ]]; then PYTHON_TAG="py3${BASH_REMATCH[1]}"; else PYTHON_TAG=py311; fi
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
if [ -n "${FUNCTIONFUSE_REVISION:-}" ]; then
    REVISION=$FUNCTIONFUSE_REVISION
else
    REVISION=$(git rev-parse HEAD)
    # tracked files that differ from the commit: say so, as functionfuse image build does
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then REVISION="$REVISION-dirty"; fi
fi
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
SOURCE=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["urls"]["Source"])')
REPO="$REGISTRY/functionfuse"
BASE_TAG="$REPO:$VERSION-$PYTHON_TAG"

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

build() {  # build TAG DOCKERFILE FROM NAME
    run docker buildx build \
        --platform "$PLATFORMS" \
        --file "$2" \
        --build-arg "BASE_IMAGE=$3" \
        --label "org.opencontainers.image.version=$VERSION" \
        --label "org.opencontainers.image.revision=$REVISION" \
        --label "org.opencontainers.image.created=$CREATED" \
        --label "org.opencontainers.image.source=$SOURCE" \
        --label "io.functionfuse.image=$4" \
        --label "io.functionfuse.version=$VERSION" \
        --provenance=false \
        --tag "$1" \
        --push \
        .
}

build "$BASE_TAG" Dockerfile "$BASE_IMAGE" base
for engine in ray prefect kfp; do
    build "$BASE_TAG-$engine" "images/$engine/Dockerfile" "$BASE_TAG" "$engine"
done
