#!/usr/bin/env bash
# ensure-command.sh COMMAND DEBIAN_PACKAGE: makes sure COMMAND exists, installing the Debian
# package with apt-get when we are root; otherwise says what to install and fails.
set -euo pipefail
command_name=$1 package=$2
if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "$command_name not found: installing $package with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  command -v "$command_name" >/dev/null
  exit 0
fi
cat >&2 <<MSG
$command_name is required and was not found.
Install it, e.g. as root:  apt-get install $package   (Debian/Ubuntu), then run make again.
MSG
exit 1
