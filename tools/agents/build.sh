#!/usr/bin/env bash
# Make real `consul`, `nomad`, `versitygw` (an S3-compatible object store) and
# `nomad-autoscaler` binaries available for tests and local runs.
#
# Resolution order for each binary (tests/agents_fixtures.py uses the same one):
#   1. $CONSUL_BIN / $NOMAD_BIN / $VERSITYGW_BIN / $NOMAD_AUTOSCALER_BIN, if set (must
#      be executable);
#   2. `consul` / `nomad` / `versitygw` / `nomad-autoscaler` on PATH;
#   3. ${XDG_CACHE_HOME:-$HOME/.cache}/comfy-service/bin/<name>-<version> for the
#      version pinned in tools/agents/versions.env, built here if missing.
#
# Building: none of the tools is packaged anywhere reachable, so the upstream module
# source is fetched from the Go module proxy (`go mod download`), copied out of
# the read-only module cache into a scratch directory, completed with the nested
# modules its go.mod replaces with ./<dir> (absent from the module zip), and its
# main package (the module root; ./cmd/versitygw for versitygw) is built with
# upstream's own go.mod/go.sum. Binaries land in the cache directory, never in the
# repository. A second run only checks the cache.
#
# Environment knobs: CONSUL_BIN, NOMAD_BIN, VERSITYGW_BIN, NOMAD_AUTOSCALER_BIN,
# XDG_CACHE_HOME, GOPROXY (as usual for go), AGENTS_BUILD_JOBS (go build -p,
# default: nproc), AGENTS_REBUILD=1
# (ignore PATH and cached binaries and rebuild the pinned ones), AGENTS_GO_CACHES
# (scratch: private Go caches removed after a successful build, the default;
# shared: Go's usual GOMODCACHE/GOCACHE, kept).
#
# Output: for each binary a line "<name> <path>" followed by its version output
# (indented), and an env file $cache/agents.env with CONSUL_BIN=, NOMAD_BIN=,
# VERSITYGW_BIN= and NOMAD_AUTOSCALER_BIN=.
#
# `build.sh --no-build [consul|nomad|versitygw|nomad-autoscaler ...]` only resolves
# (the one lookup, which comfy_service/agents/binaries.py calls): it prints
# "<name> <path>" for each name asked (default all four) and exits 3, saying to run
# `make agents`, when one would have to be built. It takes no lock and touches
# nothing in the cache.
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

# The binaries this script provides; each has <NAME>_VERSION in versions.env and
# is resolved from $<NAME>_BIN first (NAME: upper case, '-' as '_').
agents="consul nomad versitygw nomad-autoscaler"

log() { printf '[agents] %s\n' "$*" >&2; }
# NAME -> the NAME part of its variables: nomad-autoscaler -> NOMAD_AUTOSCALER.
# tr, not ${x^^}: bash 3.2 (macOS) has no case conversion.
upper() { printf '%s' "$1" | tr '[:lower:]-' '[:upper:]_'; }
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
    command -v go >/dev/null 2>&1 || die "the Go toolchain (go >= 1.25.9) is needed to build $1; install it or set $(upper "$1")_BIN"
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

# version_arg NAME -> the argument that makes the binary print its version
version_arg() {
    case "$1" in
        versitygw) printf '%s' --version ;;
        *) printf '%s' version ;;
    esac
}

# stamp_ldflags NAME MODULE VERSION COMMIT DATE -> the -X flags upstream's release
# build sets, so `<bin> <version_arg>` reports what was built
stamp_ldflags() {
    local name="$1" module="$2" version="$3" commit="$4" date="$5"
    case "$name" in
        nomad-autoscaler)
            # GitDescribe as upstream's release builds set it (unset, the version reads
            # "v0.5.0-dev"); it has no BuildDate.
            printf -- '-X %s/version.GitDescribe=v%s' "$module" "$version"
            [ -z "$commit" ] || printf -- ' -X %s/version.GitCommit=%s' "$module" "$commit"
            ;;
        versitygw)
            printf -- '-X main.Version=%s' "$version"
            [ -z "$commit" ] || printf -- ' -X main.Build=%s' "$commit"
            [ -z "$date" ] || printf -- ' -X main.BuildTime=%s' "$date"
            ;;
        *)
            printf -- '-X %s/version.GitCommit=%s' "$module" "$commit"
            [ -z "$date" ] || printf -- ' -X %s/version.BuildDate=%s' "$module" "$date"
            ;;
    esac
}

# build NAME MODULE VERSION PACKAGE "SUB@VER ..." "TAGS" COMMIT CGO "SUB@VER=h1:... ..."
# PACKAGE is the main package's path inside the module ("." for the module root).
build() {
    local name="$1" module="$2" version="$3" pkg="$4" submods="$5" tags="$6" commit="$7" cgo="$8" pins="${9:-}"
    local out="$bin_dir/$name-$version"
    require_go "$name"
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

    local ldflags
    ldflags="-s -w $(stamp_ldflags "$name" "$module" "$version" "$commit" "$date")"
    (
        cd "$work"
        CGO_ENABLED="$cgo" go build -p "$jobs" -trimpath -tags "$tags" \
            -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg"
    ) || { rm -f "$out.tmp.$$"; die "go build of $name $version failed"; }
    mv -f "$out.tmp.$$" "$out"

    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
    trap - EXIT
    log "built $out in $((SECONDS - start))s ($(du -h "$out" | cut -f1))"
}

# resolve NAME -> sets RESOLVED to the binary path (building if needed)
RESOLVED=""
resolve() {
    local name="$1" var version_var version from_env
    var="$(upper "$name")_BIN"
    version_var="$(upper "$name")_VERSION"
    version="${!version_var}"
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
    if [ "${AGENTS_REBUILD:-0}" != 1 ] && [ -x "$cached" ] && "$cached" "$(version_arg "$name")" >/dev/null 2>&1; then
        RESOLVED="$cached"
        return
    fi
    if [ "$no_build" = 1 ]; then
        printf '[agents] no `%s` binary: $%s is unset, none on PATH and %s does not exist. Run `make agents` (bash tools/agents/build.sh) to build the pinned %s.\n' \
            "$name" "$var" "$cached" "$name" >&2
        exit 3
    fi
    case "$name" in
        consul)
            build consul github.com/hashicorp/consul "$CONSUL_VERSION" . "$CONSUL_SUBMODULES" "" "${CONSUL_GIT_COMMIT:-}" 0 "${CONSUL_NOSUMDB_PINS:-}"
            ;;
        nomad)
            # cgo when a C compiler exists (exec driver's nsenter); raw_exec works without.
            local cgo=0
            command -v "$(go env CC 2>/dev/null || echo gcc)" >/dev/null 2>&1 && cgo=1
            build nomad github.com/hashicorp/nomad "$NOMAD_VERSION" . "$NOMAD_SUBMODULES" "$NOMAD_TAGS" "${NOMAD_GIT_COMMIT:-}" "$cgo"
            ;;
        versitygw)
            # CGO_ENABLED=0 as upstream's releases (.goreleaser.yaml); no nested modules.
            build versitygw github.com/versity/versitygw "$VERSITYGW_VERSION" ./cmd/versitygw "" "" "${VERSITYGW_GIT_COMMIT:-}" 0
            ;;
        nomad-autoscaler)
            # CGO_ENABLED=0 and no tags, as upstream's GNUmakefile; no nested modules.
            build nomad-autoscaler github.com/hashicorp/nomad-autoscaler "$NOMAD_AUTOSCALER_VERSION" . "" "" "${NOMAD_AUTOSCALER_GIT_COMMIT:-}" 0
            ;;
    esac
    RESOLVED="$cached"
}

if [ "$no_build" = 1 ]; then
    for name in "${@:-$agents}"; do
        for one in $name; do
            case " $agents " in
                *" $one "*) resolve "$one" ;;
                *) die "unknown agent '$one' (one of: $agents)" ;;
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

for name in $agents; do
    resolve "$name"
    printf -v "$(upper "$name")_bin" '%s' "$RESOLVED"
done
drop_scratch_caches

{
    printf '# written by tools/agents/build.sh\n'
    for name in $agents; do
        bin_var="$(upper "$name")_bin"
        printf '%s_BIN=%s\n' "$(upper "$name")" "${!bin_var}"
    done
} >"$env_file.tmp"
mv -f "$env_file.tmp" "$env_file"

for name in $agents; do
    bin_var="$(upper "$name")_bin"
    printf '%s %s\n' "$name" "${!bin_var}"
    "${!bin_var}" "$(version_arg "$name")" | sed 's/^/  /'
done
printf 'env %s\n' "$env_file"
