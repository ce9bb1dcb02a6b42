#!/usr/bin/env bash
# Make `prometheus`, `promtool`, `alertmanager` and `amtool` available for the monitoring tests
# (`make monitoring-tools`, which `make test` runs).
#
# Alertmanager and amtool: Debian's prometheus-alertmanager package, installed with apt-get when
# missing and we are root (scripts/ensure-command.sh), as redis-server is.
#
# Prometheus and promtool: Debian's package (2.42) is built without Consul service discovery,
# which monitoring/prometheus.yml is made of (`promtool check config` rejects consul_sd_configs).
# So, as tools/agents/build.sh does for Consul and Nomad, the upstream release pinned below is
# built once from its module source on the Go module proxy into
# ${XDG_CACHE_HOME:-~/.cache}/comfy-service/bin/{prometheus,promtool}-<version>: the same
# version as nomad/monitoring.nomad.hcl's image. Measured on 2 shared cores: 5 to 9 minutes
# and 2.8 GiB of scratch Go caches, removed afterwards; seconds once cached.
#
# Lookup order: $PROMETHEUS_BIN / $PROMTOOL_BIN / $ALERTMANAGER_BIN / $AMTOOL_BIN; for
# prometheus and promtool the cached build, then PATH when that promtool accepts Consul
# discovery; for alertmanager and amtool PATH (`alertmanager` or Debian's `prometheus-alertmanager`).
#
# `prometheus-tools.sh --no-build [name ...]` only looks up (tests/support/monitoring.py calls
# it): prints "<name> <path>" per name and exits 3 when one would have to be built or installed.
set -euo pipefail

PROMETHEUS_VERSION=3.5.0
# Prometheus 3.x.y is the Go module version v0.30x.y (3.5.0 is an LTS release).
PROMETHEUS_MODULE=github.com/prometheus/prometheus@v0.305.0

no_build=0
if [ "${1:-}" = "--no-build" ]; then
    no_build=1
    shift
fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(prometheus promtool alertmanager amtool)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/comfy-service"
bin_dir="$cache_root/bin"
export PATH="$PATH:/usr/local/go/bin"

log() { printf '[monitoring-tools] %s\n' "$*" >&2; }

# A promtool that accepts a Consul-discovered scrape job (Debian's does not).
has_consul_sd() {
    local probe
    probe="$(mktemp)"
    printf 'scrape_configs:\n  - job_name: probe\n    consul_sd_configs:\n      - server: 127.0.0.1:8500\n' >"$probe"
    "$1" check config "$probe" >/dev/null 2>&1
    local rc=$?
    rm -f "$probe"
    return $rc
}

# Prints the path of a usable binary, or nothing.
find_tool() {
    local name=$1 var
    var="$(printf '%s_BIN' "$name" | tr '[:lower:]' '[:upper:]')"
    if [ -n "${!var:-}" ]; then
        [ -x "${!var}" ] || { log "$var=${!var} is not executable"; exit 1; }
        printf '%s' "${!var}"
        return
    fi
    case $name in
        prometheus | promtool)
            if [ -x "$bin_dir/$name-$PROMETHEUS_VERSION" ]; then
                printf '%s' "$bin_dir/$name-$PROMETHEUS_VERSION"
                return
            fi
            local promtool
            promtool="$(command -v promtool || true)"
            if [ -n "$promtool" ] && has_consul_sd "$promtool"; then
                if [ "$name" = promtool ]; then
                    printf '%s' "$promtool"
                elif [ -x "$(dirname "$promtool")/prometheus" ]; then
                    printf '%s' "$(dirname "$promtool")/prometheus"
                fi
            fi
            ;;
        alertmanager)
            command -v alertmanager || command -v prometheus-alertmanager || true
            ;;
        amtool)
            command -v amtool || true
            ;;
        *)
            log "unknown tool $name"
            exit 1
            ;;
    esac
}

build_prometheus() {
    command -v go >/dev/null || { log "Go is needed to build Prometheus $PROMETHEUS_VERSION (see README)"; exit 1; }
    mkdir -p "$bin_dir"
    local scratch="$cache_root/go-prometheus"
    export GOMODCACHE="$scratch/mod" GOCACHE="$scratch/build" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"
    log "building Prometheus $PROMETHEUS_VERSION ($PROMETHEUS_MODULE) with $(go version | cut -d' ' -f3); 5 to 9 minutes on 2 cores"
    local started dir src
    started=$(date +%s)
    dir="$(go mod download -json "$PROMETHEUS_MODULE" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -d "$dir" ] || { log "go mod download $PROMETHEUS_MODULE gave no source directory"; exit 1; }
    # The module cache is read-only and the module's go.mod has a replace directive, so it is
    # built as the main module from a copy (go install pkg@version refuses that).
    src="$scratch/src"
    rm -rf "$src"
    cp -R "$dir" "$src"
    chmod -R u+w "$src"
    local tool version_pkg=github.com/prometheus/common/version
    for tool in promtool prometheus; do
        (cd "$src" && go build -trimpath -ldflags "-X $version_pkg.Version=$PROMETHEUS_VERSION -X $version_pkg.Revision=${PROMETHEUS_MODULE#*@}" \
            -o "$bin_dir/$tool-$PROMETHEUS_VERSION.tmp" "./cmd/$tool")
        mv "$bin_dir/$tool-$PROMETHEUS_VERSION.tmp" "$bin_dir/$tool-$PROMETHEUS_VERSION"
    done
    log "built in $(( $(date +%s) - started ))s; removing $(du -sh "$scratch" | cut -f1) of scratch Go caches"
    go clean -modcache >/dev/null 2>&1 || true
    rm -rf "$scratch"
}

missing=0
for name in "${names[@]}"; do
    path="$(find_tool "$name")"
    if [ -z "$path" ] && [ "$no_build" = 0 ]; then
        case $name in
            prometheus | promtool)
                # One build at a time (make -j, two checkouts).
                mkdir -p "$cache_root"
                exec 9>"$cache_root/prometheus-build.lock"
                flock 9
                path="$(find_tool "$name")"
                [ -n "$path" ] || { build_prometheus; path="$(find_tool "$name")"; }
                exec 9>&-
                ;;
            alertmanager | amtool)
                bash "$repo/scripts/ensure-command.sh" amtool prometheus-alertmanager
                path="$(find_tool "$name")"
                ;;
        esac
    fi
    if [ -z "$path" ]; then
        missing=1
        log "$name not found: run \`make monitoring-tools\` (builds Prometheus $PROMETHEUS_VERSION, installs prometheus-alertmanager)"
        continue
    fi
    printf '%s %s\n' "$name" "$path"
done
[ "$missing" = 0 ] || exit 3
