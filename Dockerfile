# syntax=docker/dockerfile:1
# One image for every comfy-service process; the command picks the role:
#   docker run comfy-service sim --listen 0.0.0.0 --port 8188   (a simulated ComfyUI node)
# The gateway, worker and sidecar roles arrive with their issues and use the same image.

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
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 comfy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY workflows /app/workflows
WORKDIR /app
USER comfy
EXPOSE 8188
ENTRYPOINT ["comfy-service"]
CMD ["sim", "--listen", "0.0.0.0", "--port", "8188"]
