#!/usr/bin/env bash
# Entry point of the ComfyUI node image: starts INSTANCES_PER_GPU ComfyUI processes on ports
# BASE_PORT, BASE_PORT+1, ... (or one per port in COMFYUI_PORTS, as Nomad's dynamic ports give
# them: "23011,27450") sharing the models under /models (extra_model_paths.yaml), each with
# its own input/output/temp/user folders under DATA_DIR (ComfyUI empties its temp folder at start
# and numbers outputs by listing its folder, so instances must not share them).
# SIGTERM or SIGINT is forwarded to every instance and waited for; if one instance exits on its
# own, the others are stopped and its status is returned, so the scheduler restarts the group.
# Given a command instead (`comfy-service sidecar`), runs that command alone.
# With GPU_UUID_FILE set, writes the GPU(s) the scheduler assigned (NVIDIA_VISIBLE_DEVICES) there
# for the node's sidecar, which holds no device of its own.
set -euo pipefail

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

INSTANCES_PER_GPU="${INSTANCES_PER_GPU:-1}"
BASE_PORT="${BASE_PORT:-8188}"
LISTEN_ADDR="${LISTEN_ADDR:-0.0.0.0}"
DATA_DIR="${DATA_DIR:-/data}"
COMFYUI_DIR="${COMFYUI_DIR:-/opt/comfyui/ComfyUI}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-/opt/comfyui/venv/bin/python}"
# Extra ComfyUI flags, split on spaces (e.g. "--lowvram --preview-method none").
read -r -a extra_args <<< "${COMFYUI_ARGS:-}"

ports=()
if [ -n "${COMFYUI_PORTS:-}" ]; then
  IFS=',' read -r -a ports <<< "$COMFYUI_PORTS"
  INSTANCES_PER_GPU="${#ports[@]}"
  for port in "${ports[@]}"; do
    if ! [[ "$port" =~ ^[1-9][0-9]*$ ]] || (( port > 65535 )); then
      echo "comfyui-entrypoint: COMFYUI_PORTS must list ports, got '$COMFYUI_PORTS'" >&2
      exit 64
    fi
  done
fi

if [ -n "${GPU_UUID_FILE:-}" ] && [ -n "${NVIDIA_VISIBLE_DEVICES:-}" ]; then
  printf '%s\n' "$NVIDIA_VISIBLE_DEVICES" > "$GPU_UUID_FILE"
fi

for name in INSTANCES_PER_GPU BASE_PORT; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "comfyui-entrypoint: $name must be a positive integer, got '${!name}'" >&2
    exit 64
  fi
done
if (( BASE_PORT + INSTANCES_PER_GPU - 1 > 65535 )); then
  echo "comfyui-entrypoint: ports $BASE_PORT..$((BASE_PORT + INSTANCES_PER_GPU - 1)) exceed 65535" >&2
  exit 64
fi

pids=()
stopping=0

stop_all() {
  if (( stopping == 0 )); then
    echo "comfyui-entrypoint: stopping ${#pids[@]} ComfyUI instance(s)" >&2
  fi
  stopping=1
  if (( ${#pids[@]} > 0 )); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_all TERM INT

for (( i = 0; i < INSTANCES_PER_GPU && stopping == 0; i++ )); do
  port="${ports[$i]:-$(( BASE_PORT + i ))}"
  home="$DATA_DIR/comfyui-$port"
  mkdir -p "$home/input" "$home/output" "$home/temp" "$home/user"
  echo "comfyui-entrypoint: ComfyUI $((i + 1))/$INSTANCES_PER_GPU on $LISTEN_ADDR:$port" >&2
  "$COMFYUI_PYTHON" "$COMFYUI_DIR/main.py" --listen "$LISTEN_ADDR" --port "$port" \
    --input-directory "$home/input" --output-directory "$home/output" \
    --temp-directory "$home/temp" --user-directory "$home/user" \
    --disable-auto-launch "${extra_args[@]}" &
  pids+=("$!")
done

# The first instance to end (or a signal, which makes `wait -n` return early) ends the group.
status=0
if (( stopping == 0 )); then
  wait -n || status=$?
fi
signalled=$stopping
stop_all
# Wait for every instance; `wait` returns early when a signal arrives, hence the loop.
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || true
  done
done

if (( signalled == 1 )); then
  exit 0
fi
echo "comfyui-entrypoint: a ComfyUI instance exited with status $status" >&2
exit $(( status == 0 ? 1 : status ))
