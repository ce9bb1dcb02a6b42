# syntax=docker/dockerfile:1
# The GPU node image: ComfyUI 0.3.64 with the ComfyUI_StoryDiffusion nodes, torch for CUDA 12.8,
# and this project's node sidecar beside it (its own virtualenv, from requirements/service.lock).
#   docker build -f docker/comfyui.Dockerfile -t comfyui-node .
#   docker run --gpus all -v /srv/models:/models:ro -v /srv/comfy-data:/data \
#     -e INSTANCES_PER_GPU=2 -p 8188-8189:8188-8189 comfyui-node
#   docker run --network host -e COMFYUI_URL=http://127.0.0.1:8188 comfyui-node comfy-service sidecar
# Models are never baked in: mount them at /models (see docker/extra_model_paths.yaml).
# Licences: ComfyUI is GPL-3.0, ComfyUI_StoryDiffusion Apache-2.0, torch BSD-3-Clause, the CUDA
# base image NVIDIA's Deep Learning Container licence; the sidecar is this project's own code and
# runs as a separate program. Their sources are the pinned commits below. See docs/images.md.

# --- the service wheel (the node sidecar); never the simulator, never the tests ---
FROM python:3.11.14-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY comfy_service ./comfy_service
COPY gateway ./gateway
COPY actors ./actors
COPY node_sidecar ./node_sidecar
COPY docker/build_wheel.py /usr/local/bin/build_wheel.py
RUN python /usr/local/bin/build_wheel.py /src /wheels

# --- ComfyUI and StoryDiffusion at pinned commits ---
FROM python:3.11.14-slim-bookworm AS sources
# ComfyUI v0.3.64 ("ComfyUI version 0.3.64", 2025-10-08) and the newest StoryDiffusion commit
# when this was written (2025-09-02).
ARG COMFYUI_REPO=https://github.com/Comfy-Org/ComfyUI.git
ARG COMFYUI_COMMIT=637221995f7424a561bd825de3e61ea117dfe1e3
ARG STORYDIFFUSION_REPO=https://github.com/smthemex/ComfyUI_StoryDiffusion.git
ARG STORYDIFFUSION_COMMIT=e4e0acdfb7002d89969e24d792d2b53c411c9d80
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# git comes from the pinned base's release; the fetched trees are pinned by commit and checked.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/comfyui
RUN fetch() { \
        git init -q "$3" && git -C "$3" fetch -q --depth 1 "$1" "$2" \
        && git -C "$3" checkout -q FETCH_HEAD \
        && test "$(git -C "$3" rev-parse HEAD)" = "$2" && rm -rf "$3/.git"; \
    } \
    && fetch "$COMFYUI_REPO" "$COMFYUI_COMMIT" ComfyUI \
    && fetch "$STORYDIFFUSION_REPO" "$STORYDIFFUSION_COMMIT" ComfyUI/custom_nodes/ComfyUI_StoryDiffusion \
    && grep -q '__version__ = "0.3.64"' ComfyUI/comfyui_version.py

# --- the node image ---
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG COMFYUI_COMMIT=637221995f7424a561bd825de3e61ea117dfe1e3
ARG STORYDIFFUSION_COMMIT=e4e0acdfb7002d89969e24d792d2b53c411c9d80
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.8.0
ARG TORCHVISION_VERSION=0.23.0
ARG TORCHAUDIO_VERSION=2.8.0
LABEL org.opencontainers.image.title="comfyui-node" \
      org.opencontainers.image.description="ComfyUI 0.3.64 with ComfyUI_StoryDiffusion (CUDA 12.8) and the comfy-service node sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="GPL-3.0-only AND Apache-2.0 AND LicenseRef-Proprietary" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04" \
      io.comfy-service.comfyui.commit="${COMFYUI_COMMIT}" \
      io.comfy-service.comfyui.license="GPL-3.0" \
      io.comfy-service.storydiffusion.commit="${STORYDIFFUSION_COMMIT}" \
      io.comfy-service.storydiffusion.license="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    INSTANCES_PER_GPU=1 \
    BASE_PORT=8188 \
    LISTEN_ADDR=0.0.0.0 \
    DATA_DIR=/data
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.12 and the libraries cv2 and PyAV load, from the pinned base's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0t64 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group comfy

# torch first, from the CUDA index; the constraints keep every later install on these builds.
RUN python3 -m venv /opt/comfyui/venv \
    && /opt/comfyui/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "torchaudio==${TORCHAUDIO_VERSION}" \
    && printf 'torch==%s\ntorchvision==%s\ntorchaudio==%s\n' \
        "$TORCH_VERSION" "$TORCHVISION_VERSION" "$TORCHAUDIO_VERSION" > /opt/comfyui/torch-constraints.txt

COPY --from=sources /opt/comfyui/ComfyUI /opt/comfyui/ComfyUI
COPY docker/comfyui-requirements.txt /opt/comfyui/comfyui-requirements.txt
# StoryDiffusion's opencv-python is swapped for opencv-python-headless (comfyui-requirements.txt);
# the checks fail the build if the GUI build slipped in or the plugin's imports are missing.
RUN grep -vxE 'opencv-python([<>=!~].*)?' /opt/comfyui/ComfyUI/custom_nodes/ComfyUI_StoryDiffusion/requirements.txt \
        > /opt/comfyui/storydiffusion-requirements.txt \
    && /opt/comfyui/venv/bin/pip install --no-cache-dir -c /opt/comfyui/torch-constraints.txt \
        -r /opt/comfyui/ComfyUI/requirements.txt \
        -r /opt/comfyui/storydiffusion-requirements.txt \
        -r /opt/comfyui/comfyui-requirements.txt \
    && if /opt/comfyui/venv/bin/pip show opencv-python >/dev/null 2>&1; then \
        echo "opencv-python was installed; only opencv-python-headless may be" >&2; exit 1; fi \
    && /opt/comfyui/venv/bin/python -c "import cv2, omegaconf, diffusers, peft"
COPY docker/extra_model_paths.yaml /opt/comfyui/ComfyUI/extra_model_paths.yaml

# The sidecar: its own virtualenv, from the same lock file as the service image and `make test`.
COPY requirements/service.lock /tmp/service.lock
COPY --from=wheel /wheels /tmp/wheels
RUN python3 -m venv /opt/sidecar \
    && /opt/sidecar/bin/pip install --no-cache-dir --require-hashes -r /tmp/service.lock \
    && /opt/sidecar/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && ln -s /opt/sidecar/bin/comfy-service /usr/local/bin/comfy-service \
    && rm -rf /tmp/service.lock /tmp/wheels

COPY --chmod=0755 docker/comfyui-entrypoint.sh /usr/local/bin/comfyui-entrypoint.sh
COPY docker/healthcheck.py /usr/local/bin/healthcheck.py
RUN mkdir -p /data /models && chown comfy:comfy /data
VOLUME ["/models", "/data"]
WORKDIR /opt/comfyui/ComfyUI
USER 10001:10001
EXPOSE 8188
# The first instance answering /system_stats; the sidecar role's Nomad task turns this check off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/opt/comfyui/venv/bin/python", "/usr/local/bin/healthcheck.py", "http://127.0.0.1:${BASE_PORT}/system_stats"]
ENTRYPOINT ["/usr/local/bin/comfyui-entrypoint.sh"]
