# syntax=docker/dockerfile:1
# The comfy-service image: one image for every service process, the command picks the role.
#   docker build -t comfy-service .
#   docker run -e REDIS_URL=redis://redis:6379/0 -p 8080:8080 comfy-service gateway
#   docker run -e REDIS_URL=... -e COMFYUI_URLS=http://gpu-1:8188 comfy-service worker
#   docker run -e COMFYUI_URL=http://127.0.0.1:8188 -e CONSUL_HTTP_ADDR=... comfy-service sidecar
# Dependencies come from requirements/service.lock, the lock `make test` installs too. The
# simulator (comfyui_sim) and the tests are never copied in. ComfyUI with StoryDiffusion runs from
# docker/comfyui.Dockerfile on the GPU hosts. See docs/images.md.
FROM python:3.11.14-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY comfy_service ./comfy_service
COPY gateway ./gateway
COPY actors ./actors
COPY node_sidecar ./node_sidecar
COPY docker/build_wheel.py /usr/local/bin/build_wheel.py
# The wheel holds the packages copied above (pyproject.toml's list also names comfyui_sim).
RUN python /usr/local/bin/build_wheel.py /src /wheels

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="comfy-service" \
      org.opencontainers.image.description="ComfyUI workflows as a microservice: gateway, worker and node sidecar (the command picks the role)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8080 \
    WORKFLOWS_DIR=/app/workflows \
    OUTPUT_DIR=/data/outputs
RUN useradd --create-home --uid 10001 --user-group comfy
COPY requirements/service.lock /tmp/service.lock
RUN python -m pip install --no-cache-dir --require-hashes -r /tmp/service.lock && rm /tmp/service.lock
COPY --from=wheel /wheels /tmp/wheels
RUN python -m pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY workflows /app/workflows
COPY docker/healthcheck.py /usr/local/bin/healthcheck.py
RUN mkdir -p /data/outputs && chown comfy:comfy /data/outputs
VOLUME ["/data/outputs"]
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# The gateway's liveness. Worker and sidecar serve no /healthz: their Nomad jobs turn this check
# off (docker driver `healthchecks { disable = true }`) and use their own checks instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "http://127.0.0.1:${API_PORT}/healthz"]
ENTRYPOINT ["comfy-service"]
CMD ["gateway"]
