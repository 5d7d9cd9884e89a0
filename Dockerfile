# Two stages: build the venv and generated code, then a small non-root runtime.
# One image runs the server (default) or a worker:
#   docker run -p 50051:50051 longrun
#   docker run longrun python -m worker
FROM python:3.11-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements-dev.txt pyproject.toml Makefile README.md ./
RUN python -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir -r requirements.txt \
    && /app/.venv/bin/pip install --no-cache-dir mypy-protobuf==5.1.0
COPY protos ./protos
COPY examples ./examples
COPY lro ./lro
COPY server ./server
COPY worker ./worker
COPY clients ./clients
RUN touch .venv/.installed && make proto PY=/app/.venv/bin/python \
    && /app/.venv/bin/pip install --no-cache-dir --no-deps . \
    && /app/.venv/bin/pip uninstall -y grpcio-tools mypy-protobuf

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 longrun
WORKDIR /app
COPY --from=build /app /app
RUN mkdir -p /app/data && chown longrun /app/data
USER longrun
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 LONGRUN_ADDRESS=0.0.0.0:50051
EXPOSE 50051 8080
CMD ["python", "-m", "server"]
