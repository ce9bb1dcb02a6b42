#!/usr/bin/env bash
# Make real `consul` and `nomad` binaries available for tests and local runs.
#
# Resolution order for each binary (tests/agents_fixtures.py uses the same one):
#   1. $CONSUL_BIN / $NOMAD_BIN, if set (must be executable);
#   2. `consul` / `nomad` on PATH;
#   3. ${XDG_CACHE_HOME:-$HOME/.cache}/comfy-service/bin/<name>-<version> for the
#      version pinned in tools/agents/versions.env, built here if missing.
#
# Building: neither tool is packaged anywhere reachable, so the upstream module
# source is fetched from the Go module proxy (`go mod download`), copied out of
# the read-only module cache into a scratch directory, completed with the nested
# modules its go.mod replaces with ./<dir> (absent from the module zip), and its
# main package is built with upstream's own go.mod/go.sum. Binaries land in the
# cache directory, never in the repository. A second run only checks the cache.
#
# Environment knobs: CONSUL_BIN, NOMAD_BIN, XDG_CACHE_HOME, GOPROXY (as usual for
# go), AGENTS_BUILD_JOBS (go build -p, default: nproc), AGENTS_REBUILD=1 (ignore
# PATH and cached binaries and rebuild the pinned ones), AGENTS_GO_CACHES
# (scratch: private Go caches removed after a successful build, the default;
# shared: Go's usual GOMODCACHE/GOCACHE, kept).
#
# Output: for each binary a line "<name> <path>" followed by its `version`
# output (indented), and an env file $cache/agents.env with CONSUL_BIN=/NOMAD_BIN=.
#
# `build.sh --no-build [consul|nomad ...]` only resolves (the one lookup, which
# comfy_service/agents/binaries.py calls): it prints "<name> <path>" for each
# name asked (default both) and exits 3, saying to run `make agents`, when one
# would have to be built. It takes no lock and touches nothing in the cache.
set -euo pipefail

no_build=0
if [ "${1:-}" = "--no-build" ]; then
    no_build=1
    shift
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/comfy-service"
bin_dir="$cache_root/bin"
env_file="$cache_root/agents.env"
[ "$no_build" = 1 ] || mkdir -p "$bin_dir"

log() { printf '[agents] %s\n' "$*" >&2; }
die() { printf '[agents] ERROR: %s\n' "$*" >&2; exit 1; }

# --- go environment for reproducible, non-interactive builds ----------------
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" # never download a toolchain behind our back
export GOWORK=off
export GOFLAGS="-mod=mod -buildvcs=false"
export GIT_TERMINAL_PROMPT=0
jobs="${AGENTS_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Go caches for a build: ~3.3 GiB of modules and ~3.2 GiB of compiled packages,
# useless once the binaries are cached. By default ("scratch") they live under
# $cache_root/go and are removed after a successful build (kept after a failure,
# so a retry resumes); AGENTS_GO_CACHES=shared uses the usual GOMODCACHE/GOCACHE.
go_caches="${AGENTS_GO_CACHES:-scratch}"
built_any=0
use_scratch_caches() {
    if [ "$go_caches" = scratch ]; then
        export GOMODCACHE="$cache_root/go/mod" GOCACHE="$cache_root/go/build"
        mkdir -p "$GOMODCACHE" "$GOCACHE"
    fi
}
drop_scratch_caches() {
    if [ "$go_caches" = scratch ] && [ "$built_any" = 1 ] && [ -d "$cache_root/go" ]; then
        log "removing scratch Go caches ($(du -sh "$cache_root/go" 2>/dev/null | cut -f1)); AGENTS_GO_CACHES=shared keeps Go's own"
        go clean -modcache >/dev/null 2>&1 || chmod -R u+w "$cache_root/go"
        rm -rf "$cache_root/go"
    fi
}

require_go() {
    command -v go >/dev/null 2>&1 || die "the Go toolchain (go >= 1.25.9) is needed to build consul/nomad; install it or set CONSUL_BIN/NOMAD_BIN"
}

# json_field FIELD <json  -- extracts a top-level string field of `go mod download -json`
json_field() { sed -n "s/^\t\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n1; }
# json_origin_hash <json  -- the VCS commit from the "Origin" block, if any
json_origin_hash() { sed -n 's/^\t\t"Hash": "\([0-9a-f]*\)",\{0,1\}$/\1/p' | head -n1; }

# download MODULE@VERSION [PINNED_SUM] -> prints the JSON record (module cache is
# populated). With PINNED_SUM the checksum database is skipped for this one module
# (it has no entry for it) and the downloaded hash must equal the pin instead.
download() {
    local json nosumdb=""
    [ -z "${2:-}" ] || nosumdb="${1%@*}"
    if ! json="$(cd "$cache_root" && GONOSUMDB="$nosumdb" go mod download -json "$1")"; then
        printf '%s\n' "$json" >&2
        die "go mod download $1 failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
    fi
    if [ -n "${2:-}" ]; then
        local sum
        sum="$(json_field Sum <<<"$json")"
        [ "$sum" = "$2" ] || die "$1: downloaded hash $sum does not match the pinned $2 (tools/agents/versions.env)"
    fi
    printf '%s\n' "$json"
}

# pinned_sum SUB@VER "SUB@VER=h1:... ..." -> the pinned hash for that module, if any
pinned_sum() {
    local pin
    for pin in $2; do
        [ "${pin%%=*}" = "$1" ] && { printf '%s' "${pin#*=}"; return; }
    done
    return 0
}

# build NAME MODULE VERSION "SUB@VER ..." "TAGS" COMMIT CGO "SUB@VER=h1:... ..."
build() {
    local name="$1" module="$2" version="$3" submods="$4" tags="$5" commit="$6" cgo="$7" pins="${8:-}"
    local out="$bin_dir/$name-$version"
    require_go
    use_scratch_caches
    built_any=1
    log "building $name $version from $module@v$version with $(go env GOVERSION) (-p $jobs); this takes a while on a cold cache"
    local start=$SECONDS

    local json dir date
    json="$(download "$module@v$version")"
    dir="$(json_field Dir <<<"$json")"
    [ -n "$dir" ] && [ -d "$dir" ] || die "no source directory for $module@v$version"
    [ -n "$commit" ] || commit="$(json_origin_hash <<<"$json")"
    date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$(json_field Info <<<"$json")" 2>/dev/null || true)"

    local work
    work="$(mktemp -d "$cache_root/src-$name-$version.XXXXXX")"
    # shellcheck disable=SC2064
    trap "chmod -R u+w '$work' 2>/dev/null; rm -rf '$work'" EXIT
    cp -R "$dir/." "$work/"
    chmod -R u+w "$work"

    local sm sub sver sjson sdir
    for sm in $submods; do
        sub="${sm%@*}"
        sver="${sm#*@}"
        sjson="$(download "$module/$sub@$sver" "$(pinned_sum "$sm" "$pins")")"
        sdir="$(json_field Dir <<<"$sjson")"
        [ -n "$sdir" ] && [ -d "$sdir" ] || die "no source directory for $module/$sub@$sver"
        rm -rf "${work:?}/$sub"
        cp -R "$sdir" "$work/$sub"
        chmod -R u+w "$work/$sub"
    done

    local ldflags="-s -w -X $module/version.GitCommit=$commit"
    [ -z "$date" ] || ldflags="$ldflags -X $module/version.BuildDate=$date"
    (
        cd "$work"
        CGO_ENABLED="$cgo" go build -p "$jobs" -trimpath -tags "$tags" \
            -ldflags "$ldflags" -o "$out.tmp.$$" .
    ) || { rm -f "$out.tmp.$$"; die "go build of $name $version failed"; }
    mv -f "$out.tmp.$$" "$out"

    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
    trap - EXIT
    log "built $out in $((SECONDS - start))s ($(du -h "$out" | cut -f1))"
}

# resolve NAME ENVVAR VERSION -> sets RESOLVED to the binary path (building if needed)
RESOLVED=""
resolve() {
    local name="$1" var="$2" version="$3" from_env
    from_env="${!var:-}"
    if [ -n "$from_env" ]; then
        [ -x "$from_env" ] || die "$var=$from_env is not an executable file"
        RESOLVED="$from_env"
        return
    fi
    if [ "${AGENTS_REBUILD:-0}" != 1 ] && command -v "$name" >/dev/null 2>&1; then
        RESOLVED="$(command -v "$name")"
        return
    fi
    local cached="$bin_dir/$name-$version"
    if [ "${AGENTS_REBUILD:-0}" != 1 ] && [ -x "$cached" ] && "$cached" version >/dev/null 2>&1; then
        RESOLVED="$cached"
        return
    fi
    if [ "$no_build" = 1 ]; then
        printf '[agents] no `%s` binary: $%s is unset, none on PATH and %s does not exist. Run `make agents` (bash tools/agents/build.sh) to build the pinned consul/nomad.\n' \
            "$name" "$var" "$cached" >&2
        exit 3
    fi
    case "$name" in
        consul)
            build consul github.com/hashicorp/consul "$CONSUL_VERSION" "$CONSUL_SUBMODULES" "" "${CONSUL_GIT_COMMIT:-}" 0 "${CONSUL_NOSUMDB_PINS:-}"
            ;;
        nomad)
            # cgo when a C compiler exists (exec driver's nsenter); raw_exec works without.
            local cgo=0
            command -v "$(go env CC 2>/dev/null || echo gcc)" >/dev/null 2>&1 && cgo=1
            build nomad github.com/hashicorp/nomad "$NOMAD_VERSION" "$NOMAD_SUBMODULES" "$NOMAD_TAGS" "${NOMAD_GIT_COMMIT:-}" "$cgo"
            ;;
    esac
    RESOLVED="$cached"
}

if [ "$no_build" = 1 ]; then
    for name in "${@:-consul nomad}"; do
        for one in $name; do
            case "$one" in
                consul) resolve consul CONSUL_BIN "$CONSUL_VERSION" ;;
                nomad) resolve nomad NOMAD_BIN "$NOMAD_VERSION" ;;
                *) die "unknown agent '$one' (consul or nomad)" ;;
            esac
            printf '%s %s\n' "$one" "$RESOLVED"
        done
    done
    exit 0
fi

# Serialise concurrent runs (make -j, two shells) on the cache directory.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$bin_dir/.lock"
    flock 9
fi
# Scratch source copies left by an interrupted build.
for stale in "$cache_root"/src-*; do
    [ -e "$stale" ] || continue
    chmod -R u+w "$stale" 2>/dev/null || true
    rm -rf "$stale"
done

resolve consul CONSUL_BIN "$CONSUL_VERSION"
consul_bin="$RESOLVED"
resolve nomad NOMAD_BIN "$NOMAD_VERSION"
nomad_bin="$RESOLVED"
drop_scratch_caches

{
    printf '# written by tools/agents/build.sh\n'
    printf 'CONSUL_BIN=%s\n' "$consul_bin"
    printf 'NOMAD_BIN=%s\n' "$nomad_bin"
} >"$env_file.tmp"
mv -f "$env_file.tmp" "$env_file"

printf 'consul %s\n' "$consul_bin"
"$consul_bin" version | sed 's/^/  /'
printf 'nomad %s\n' "$nomad_bin"
"$nomad_bin" version | sed 's/^/  /'
printf 'env %s\n' "$env_file"
