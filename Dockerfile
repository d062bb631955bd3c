# The functionfuse base image: Python, functionfuse with its core, S3 and Dask extras, a
# non-root user. Engine images (images/ray, images/prefect, images/kfp) build on it.
#
#   docker build -t functionfuse:0.1.0-py311 .
#   docker build --build-arg BASE_IMAGE=python:3.12-slim -t functionfuse:0.1.0-py312 .
#
# BASE_IMAGE is any Debian-like image with python3 and its venv module (python:3.X-slim,
# or a local image). Packages come from the index; to build offline, serve a wheelhouse
# and pass --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/
# with --network host (what `functionfuse image build --wheelhouse DIR` does).
ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtual environment in /opt/functionfuse --------------------------------------
FROM ${BASE_IMAGE} AS build
ARG EXTRAS=s3,dask
# Service models botocore keeps (S3 storage needs s3; credentials may need sts/sso); "all" keeps every one.
ARG BOTOCORE_SERVICES="s3 sts sso sso-oidc"
# 1: remove debug sections from shared libraries (binutils from apt, in this stage only).
ARG STRIP_DEBUG=1
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_CONSTRAINT
# A digest of the wheelhouse the packages come from (functionfuse image build --wheelhouse):
# a new wheelhouse invalidates the layer cache of the installs below.
ARG FUNCTIONFUSE_WHEELS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies first, in a layer of their own (installed with a stub package that has only
# the version), so a change to functionfuse's code does not reinstall them.
COPY pyproject.toml README.md /stub/
COPY functionfuse/_version.py /stub/functionfuse/_version.py
RUN python3 -m venv /opt/functionfuse \
 && touch /stub/functionfuse/__init__.py \
 && /opt/functionfuse/bin/python -m pip install --no-compile "/stub[${EXTRAS}]" \
 && /opt/functionfuse/bin/python -m pip uninstall -y -q functionfuse
# What a runtime image does not need: test suites, C sources and headers, setuptools,
# numpy's f2py, type stubs, unused botocore service models, debug sections.
RUN site=$(/opt/functionfuse/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && find "$site" -depth -type d -name tests -exec rm -rf {} + \
 && find "$site" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' -o -name '*.pyi' \) -delete \
 && rm -rf "$site"/numpy/_core/include "$site"/numpy/f2py "$site"/setuptools* "$site"/pkg_resources "$site"/_distutils_hack "$site"/distutils-precedence.pth "$site"/wheel* \
 && if [ -d "$site/botocore/data" ] && [ "$BOTOCORE_SERVICES" != all ]; then \
        for d in "$site"/botocore/data/*/; do \
            case " $BOTOCORE_SERVICES " in *" $(basename "$d") "*) ;; *) rm -rf "$d" ;; esac; \
        done; \
    fi \
 && if [ "$STRIP_DEBUG" = 1 ]; then \
        if ! command -v strip >/dev/null; then \
            (apt-get update -q && apt-get install -y -q --no-install-recommends binutils) >/tmp/apt.log 2>&1 \
            || echo "binutils could not be installed: shared libraries keep their debug sections"; \
        fi; \
        if command -v strip >/dev/null; then \
            find /opt/functionfuse -type f -name '*.so*' | while read -r f; do \
                if readelf -S "$f" 2>/dev/null | grep -q '\.debug_info'; then strip --strip-debug "$f"; fi; \
            done; \
        fi; \
    fi
# functionfuse itself; then the venv is compiled once (pip excepted: it rarely runs), since
# the runtime user cannot write __pycache__ into /opt.
COPY pyproject.toml README.md ./
COPY functionfuse ./functionfuse
RUN /opt/functionfuse/bin/python -m pip install --no-compile --no-deps . \
 && /opt/functionfuse/bin/python -m compileall -q -j 0 -x '/site-packages/pip/' /opt/functionfuse/lib >/dev/null \
 && out=$(/opt/functionfuse/bin/python -c 'import functionfuse, s3fs, dask.array, zarr, h5py, numcodecs.blosc, numcodecs.zstd, aiohttp, botocore.session; botocore.session.get_session().create_client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"); print("functionfuse", functionfuse.__version__)' 2>&1) \
 && echo "$out" && ! echo "$out" | grep -q -e Error -e Traceback

# -- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG FUNCTIONFUSE_UID=1000
LABEL org.opencontainers.image.title="functionfuse" \
      org.opencontainers.image.description="functionfuse with its core, S3 and Dask extras" \
      org.opencontainers.image.source="https://github.com/functionfuse/functionfuse" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN (getent group ${FUNCTIONFUSE_UID} >/dev/null || groupadd --gid ${FUNCTIONFUSE_UID} functionfuse) \
 && (getent passwd ${FUNCTIONFUSE_UID} >/dev/null \
     || useradd --uid ${FUNCTIONFUSE_UID} --gid ${FUNCTIONFUSE_UID} --create-home --shell /bin/bash functionfuse) \
 && mkdir -p /work && chown ${FUNCTIONFUSE_UID}:${FUNCTIONFUSE_UID} /work \
 # login shells (KubeRay starts Ray with `bash -lc`) reset PATH in /etc/profile
 && echo 'export PATH=/opt/functionfuse/bin:$PATH' >/etc/profile.d/functionfuse.sh
COPY --from=build /opt/functionfuse /opt/functionfuse
ENV PATH=/opt/functionfuse/bin:$PATH \
    VIRTUAL_ENV=/opt/functionfuse \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/functionfuse
WORKDIR /work
USER ${FUNCTIONFUSE_UID}:${FUNCTIONFUSE_UID}
CMD ["python"]
