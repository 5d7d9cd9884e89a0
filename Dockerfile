# longrun server and worker image. One image runs either role, sharing the
# SQLite database through the /data volume:
#   docker volume create longrun-data
#   docker run -d -p 127.0.0.1:50051:50051 -e LONGRUN_ALLOW_UNAUTHENTICATED=true \
#       -v longrun-data:/data longrun                                           # server
#   docker run -d --no-healthcheck -v longrun-data:/data longrun longrun-worker  # a worker
# compose.yaml runs a server and two workers that way.
#
# The server listens on 0.0.0.0 in its container (LONGRUN_ADDRESS below: a
# published port reaches nothing else), and refuses a non-loopback address
# while nobody authenticates callers. The image does not switch that off: say
# LONGRUN_ALLOW_UNAUTHENTICATED=true only where the published port is private
# (127.0.0.1:, as above) or something in front authenticates (Cloud Run IAM).
# TLS: mount the files and set LONGRUN_TLS_CERT / LONGRUN_TLS_KEY; the health
# check then connects with TLS (see longrun_server/healthcheck.py).
#
# The base is the multi-arch index of python:3.11-slim-bookworm, pinned by
# digest (refresh: `docker buildx imagetools inspect python:3.11-slim-bookworm`).
# CI has no registry: scripts/container_smoke.sh passes --build-arg BASE=<a local
# stand-in with python, python3 and venv>; nothing below may depend on more.
# Only the classic builder's features are used (Debian's docker.io has no buildx).
ARG BASE=python:3.11-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb

# ---- build: the two wheels, then the runtime venv from them ----
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# A throw-away venv whose pip builds the wheels (grpcio-tools and setuptools come
# in pip's isolated build environments only).
RUN python -m venv /tmp/build-venv
WORKDIR /src
# The pinned packages and everything they need, as wheels, in a layer that
# changes only with requirements.txt: a source change downloads none of them again.
COPY requirements.txt ./
RUN /tmp/build-venv/bin/pip wheel --quiet --wheel-dir /wheelhouse -r requirements.txt
# Exactly what the two distributions are built from (.dockerignore keeps the rest out).
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY clients/python ./clients/python
COPY core ./core
COPY server ./server
COPY worker ./worker
RUN /tmp/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels ./clients/python .
# The runtime venv gets no pip or setuptools of its own: the build venv's pip
# installs into it (--python), from the two wheels and the wheelhouse only: a
# dependency that requirements.txt does not cover fails here. pip compiles every
# module at install, so the non-root runtime never needs to write __pycache__.
RUN python -m venv --without-pip /opt/longrun \
    && /tmp/build-venv/bin/pip --python /opt/longrun/bin/python install \
        --no-index --find-links /wheelhouse --no-warn-script-location \
        -c requirements.txt /wheels/*.whl \
    && /opt/longrun/bin/python -c "import longrun_server, longrun_worker, longrun_client" \
    && if /opt/longrun/bin/python -c "import grpc_tools" 2>/dev/null; then \
        echo "grpcio-tools leaked into the runtime venv" >&2; exit 1; fi

# ---- runtime: the base plus /opt/longrun, nothing else ----
FROM ${BASE}
RUN groupadd --gid 10001 longrun \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin longrun \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/longrun /opt/longrun
ENV PATH=/opt/longrun/bin:$PATH \
    LONGRUN_ADDRESS=0.0.0.0:50051 \
    LONGRUN_SQLITE_PATH=/data/longrun.db \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A new named volume starts with this folder's owner (10001), so the non-root
# server can create the database. A bind mount keeps the host folder's owner.
VOLUME /data
USER 10001:10001
WORKDIR /home/longrun
# gRPC only; the HTTP gateway is off unless LONGRUN_HTTP_ADDRESS is set (then publish it too).
EXPOSE 50051
# The gRPC health service on the server's own port (0.0.0.0/[::] mean "this host"),
# over TLS when LONGRUN_TLS_CERT is set (longrun_server/healthcheck.py).
# Workers serve no port: run them with --no-healthcheck (compose.yaml disables it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "longrun_server.healthcheck"]
CMD ["longrun-server"]
