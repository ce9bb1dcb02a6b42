# syntax=docker/dockerfile:1
# One image for every comfy-service process; the command picks the role:
#   docker run -e REDIS_URL=... -e API_HOST=0.0.0.0 -p 8080:8080 comfy-service gateway
#   docker run -e REDIS_URL=... -e COMFYUI_URLS=http://gpu-1:8188 comfy-service worker
#   docker run -p 8188:8188 comfy-service sim --listen 0.0.0.0 --port 8188   (a simulated node)
# ComfyUI itself (with StoryDiffusion and the checkpoint) runs from its own image on GPU hosts.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY comfy_service ./comfy_service
COPY comfyui_sim ./comfyui_sim
COPY gateway ./gateway
COPY actors ./actors
COPY node_sidecar ./node_sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 WORKFLOWS_DIR=/app/workflows \
    OUTPUT_DIR=/data/outputs
RUN useradd --create-home --uid 10001 comfy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY workflows /app/workflows
RUN mkdir -p /data/outputs && chown comfy /data/outputs
VOLUME /data/outputs
WORKDIR /app
USER comfy
EXPOSE 8080 8188
ENTRYPOINT ["comfy-service"]
CMD ["gateway"]
