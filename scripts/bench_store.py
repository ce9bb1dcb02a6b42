"""`make bench BENCH=store`: storing an output from a node and serving it, local vs S3.

For 1, 20 and 100 MB files: the worker's copy from a ComfyUI node (a simulator process serving
the file over HTTP /view) into the store, and a streamed read back (what the gateway does for
GET .../outputs/{i}), each timed; and the worker process's memory growth while copying (peak
RSS over the RSS just before, in a fresh process per case so one case cannot hide another's).
The S3 backend is a real versitygw process on loopback. Prints Markdown rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.comfy_client import ComfyClient  # noqa: E402
from comfy_service.settings import Settings  # noqa: E402
from comfy_service.storage import open_store  # noqa: E402

MB = 1024 * 1024
RUNS = 3


def _status_kb(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _case(node_url: str, filename: str, env: dict[str, str]) -> dict[str, float]:
    store = open_store(Settings.from_env(env))
    client = ComfyClient(node_url, timeout_s=30)
    rss_before = _status_kb("VmRSS")
    started = time.perf_counter()
    saved = await client.copy_output({"filename": filename, "subfolder": "", "type": "output"},
                                     store, f"outputs/bench/{filename}", "image/png",
                                     512 * MB, 120)
    stored_s = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    started = time.perf_counter()
    found = await store.get(f"outputs/bench/{filename}")
    assert found is not None
    served = 0
    async for chunk in found.chunks:
        served += len(chunk)
    serve_s = time.perf_counter() - started
    await client.close()
    await store.aclose()
    assert served == saved.size
    return {"store_s": stored_s, "serve_s": serve_s,
            "rss_growth_mb": max(0, peak - rss_before) / 1024}


def run_case(node_url: str, filename: str, env: dict[str, str]) -> dict[str, float]:
    """One case in a fresh interpreter (its own peak RSS)."""
    done = subprocess.run([sys.executable, __file__, "--case", node_url, filename,
                           json.dumps(env)], capture_output=True, text=True, timeout=300,
                          check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_store(root: pathlib.Path) -> list[str]:
    from tests.support.processes import SimNodeProcess
    from tests.support.s3 import S3Server
    sim = SimNodeProcess(root / "node")
    s3 = S3Server(root / "s3")
    rows = []
    try:
        for size_mb in (1, 20, 100):
            name = f"bench_{size_mb}mb.png"
            (root / "node" / "output" / name).write_bytes(os.urandom(size_mb * MB))
            for backend, env in (("local", {"OUTPUT_DIR": str(root / "local")}),
                                 ("s3", {**s3.env(), "S3_PREFIX": "bench"})):
                runs = [run_case(sim.url, name, env) for _ in range(RUNS)]
                store_s = statistics.median(r["store_s"] for r in runs)
                serve_s = statistics.median(r["serve_s"] for r in runs)
                growth = max(r["rss_growth_mb"] for r in runs)
                rows.append(f"| {size_mb} MB, {backend} | {store_s * 1000:.0f} ms "
                            f"({size_mb / store_s:.0f} MB/s) | {serve_s * 1000:.0f} ms "
                            f"({size_mb / serve_s:.0f} MB/s) | {growth:.1f} MB |")
    finally:
        s3.stop()
        sim.stop()
    return rows


HEADER = ("| output (median of 3) | node -> store | store -> reader | worker RSS growth (max) |\n"
          "| --- | --- | --- | --- |")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        print(json.dumps(asyncio.run(_case(sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))))
    else:
        with tempfile.TemporaryDirectory(prefix="cs-bench-store-") as tmp:
            print(HEADER)
            print("\n".join(bench_store(pathlib.Path(tmp))))
