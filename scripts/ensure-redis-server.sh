#!/usr/bin/env bash
# Makes sure a redis-server binary exists for the test suite: tests start their own servers.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found: installing it with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  command -v redis-server >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
redis-server is required by the tests and was not found.
Install it, e.g. as root:  apt-get install redis-server   (Debian/Ubuntu)
or:  brew install redis   (macOS); then run `make test` again.
MSG
exit 1
