"""Container HEALTHCHECK: exit 0 when the URL given answers 2xx within a few seconds, else 1.

The URL may name environment variables (`http://127.0.0.1:${API_PORT}/healthz`): HEALTHCHECK's
exec form expands none, so this does, and a variable left unset fails the check rather than
probing a wrong port.

Both images use it (the slim and CUDA bases ship no curl): the service image probes the gateway's
/healthz, the node image its first ComfyUI instance's /system_stats.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    url = os.path.expandvars(argv[0])
    if "$" in url:
        print(f"unhealthy: unset variable in {url}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
