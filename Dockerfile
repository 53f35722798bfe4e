# syntax=docker/dockerfile:1
# Tuike: one image for every process. The command picks it (deploy/container.py):
#   docker run tuike gateway | user|order|commission|stats [serve|worker|migrate]
#              | migrate [service ...] | reconcile | stats-rebuild
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve the pinned runtime dependencies into a virtualenv -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/tuike
ENV PATH=/opt/tuike/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall them. The lock also pins the dev
# tools (pytest, mypy, ruff): installing it as constraints of the project keeps the image to
# the runtime packages at exactly the locked versions (docs/decisions/0601-container-image.md).
COPY requirements.lock pyproject.toml README.md ./
RUN python - <<'PY' > /tmp/runtime-requirements.txt
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(re.split(r"[<>=!~ ;]", d, maxsplit=1)[0] for d in deps))
PY
RUN pip install -c requirements.lock -r /tmp/runtime-requirements.txt
COPY libs ./libs
COPY services ./services
COPY gateway ./gateway
COPY deploy ./deploy
COPY bench ./bench
RUN pip install --no-deps . && pip check

# --- runtime: slim, non-root -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tuike" \
      org.opencontainers.image.description="Tuike promoter / multi-level distribution backend" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tuike/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TUIKE_HOST=0.0.0.0 \
    TUIKE_KAFKA_ENABLE_IDEMPOTENCE=true
RUN groupadd --system --gid 10001 tuike \
 && useradd --system --uid 10001 --gid tuike --home-dir /app --shell /usr/sbin/nologin tuike \
 && mkdir -p /app/var && chown -R tuike:tuike /app
COPY --from=build /opt/tuike /opt/tuike
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8001 8002 8003 8004 9100
# Liveness of whichever process runs here: TUIKE_PORT is set per process.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "deploy.container", "healthcheck"]
ENTRYPOINT ["python", "-m", "deploy.container"]
CMD ["gateway"]
