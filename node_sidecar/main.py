"""`comfy-service sidecar`: one ComfyUI's health and load, registered in Consul.

Three phases: register (service with an HTTP check on ComfyUI and a TTL check), tick (probe
ComfyUI, read the GPU, keep the TTL passing while probes succeed, refresh Meta when load moved,
apply an operator's cordon or drain from Consul KV as service maintenance), drain and
deregister on SIGTERM. A ComfyUI that hangs while its port still accepts connections fails the
probes, so the TTL lapses and the node turns critical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import consul
import httpx
from consul.callback import CB
from prometheus_client import Gauge, Histogram, start_http_server
from requests.adapters import HTTPAdapter

from comfy_service import __version__, availability, logs
from comfy_service import constants as c
from comfy_service.consul_client import sync_client
from comfy_service.logs import event
from comfy_service.open_files import raise_open_files_limit
from comfy_service.polling import wait_until
from comfy_service.tls import shared_context
from node_sidecar import meta as node_meta
from node_sidecar.gpu import GpuReader, assigned_uuid, open_reader
from node_sidecar.settings import SidecarSettings

log = logging.getLogger("node_sidecar")

GPU_UUID_WAIT_S = 60.0
DRAIN_GONE_S = 5.0
STATS_INTERVAL_S = 30.0
CONSUL_CONNECTIONS = 100

# Named after NVIDIA's DCGM exporter, so existing dashboards and alerts apply.
GPU_UTIL = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilisation (%)", ["gpu", "UUID"])
FB_USED = Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (MiB)", ["gpu", "UUID"])
FB_FREE = Gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (MiB)", ["gpu", "UUID"])
GPU_TEMP = Gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (C)", ["gpu", "UUID"])
POWER = Gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (W)", ["gpu", "UUID"])
QUEUE_RUNNING = Gauge("comfyui_queue_running", "Prompts ComfyUI is executing")
QUEUE_PENDING = Gauge("comfyui_queue_pending", "Prompts waiting in ComfyUI's queue")
COMFYUI_UP = Gauge("comfyui_up", "1 while the sidecar's probes of ComfyUI succeed")
PROBE_SECONDS = Histogram("comfyui_probe_duration_seconds",
                          "Time ComfyUI took to answer a probe (/queue, and /system_stats "
                          "every 30 s)",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


class Sidecar:
    def __init__(self, settings: SidecarSettings, reader: GpuReader,
                 consul_client: consul.Consul | None = None) -> None:
        """`consul_client`: shared by all the ComfyUIs a process follows (`shared_consul`),
        as is the TLS context of their HTTP clients (comfy_service/tls.py)."""
        self.settings = settings
        self.reader = reader
        self.consul = consul_client or sync_client(settings.consul_addr, settings.consul_token)
        self.http = httpx.Client(base_url=settings.comfyui_url,
                                 timeout=max(0.5, settings.probe_interval_s),
                                 verify=shared_context())
        self.service_id = node_meta.service_id(settings.host_name, settings.gpu_index,
                                               settings.comfyui_port)
        self.ttl_check = f"{self.service_id}:alive"
        self._meta: dict[str, str] | None = None
        self._meta_at = 0.0
        self._ttl_at = 0.0  # when the TTL check was last passed; 0: failing or never
        self._wish_at = 0.0  # when the operator's wish was last read from KV
        self._stats_at = -STATS_INTERVAL_S  # when /system_stats (the version) was last read
        self.comfyui_version = "unknown"
        # The state this sidecar has put in Consul (availability.py) and why.
        self.availability = availability.READY
        self._availability_why = ""
        self._wish_unreadable = False

    # --- phases --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        load = self.probe() or node_meta.NodeLoad(0, 0, self.reader.read())
        try:
            self.register(load)
        except consul.ACLPermissionDenied:
            raise  # refused: say so and exit
        except Exception:  # Consul busy (a fleet starting at once) or away: the ticks retry
            event(log, "sidecar.register_failed", logging.WARNING, exc_info=True,
                  service_id=self.service_id, retry="at the next probe")
        else:
            event(log, "sidecar.registered", service_id=self.service_id,
                  comfyui=self.settings.comfyui_url, gpu_source=self.reader.source)
        try:
            while not stop.wait(self.settings.probe_interval_s):
                self.tick()
            self.drain()
        finally:
            self.consul.agent.service.deregister(self.service_id)
            event(log, "sidecar.deregistered", service_id=self.service_id)

    def drain(self) -> None:
        """Stop new work reaching this ComfyUI and wait (bounded) until its queue is empty.

        Consul maintenance tells every worker to bind nothing more here while the prompts
        ComfyUI holds run to the end; the TTL check keeps passing meanwhile, so workers see a
        draining node, not a failed one. The queue must stay empty for `drain_settle_s`, longer
        than a worker takes to notice the maintenance, so a bind racing it is not cut off.
        """
        settings = self.settings
        started = time.monotonic()
        try:
            self.set_availability(availability.DRAINING, "the allocation is stopping")
        except Exception:
            event(log, "sidecar.drain_unannounced", logging.WARNING, exc_info=True)
        event(log, "sidecar.draining", service_id=self.service_id,
              timeout_s=settings.drain_timeout_s)
        empty_since: float | None = None
        answered_at = time.monotonic()
        pause = threading.Event()
        while time.monotonic() - started < settings.drain_timeout_s:
            load = self.probe()
            now = time.monotonic()
            if load is None:
                # One slow answer from a busy ComfyUI is not the end of it; silence this long
                # means it is gone and nothing is left to wait for.
                if now - answered_at >= DRAIN_GONE_S:
                    break
                pause.wait(min(0.25, settings.probe_interval_s))
                continue
            answered_at = now
            if load.queue_running or load.queue_pending:
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since >= settings.drain_settle_s:
                break
            with contextlib.suppress(Exception):
                self.consul.agent.check.ttl_pass(self.ttl_check, notes="draining")
            pause.wait(min(0.25, settings.probe_interval_s))
        event(log, "sidecar.drained", service_id=self.service_id,
              seconds=round(time.monotonic() - started, 3),
              queue_empty=empty_since is not None)

    def tick(self) -> None:
        """One probe and what Consul needs to hear of it. With 1,000 nodes every request here
        is 1,000 a second, so only what changed is written: a failure at once, Meta by
        `meta.reregister_due`, the passing TTL three times per TTL, the wish every
        `wish_interval_s`."""
        settings = self.settings
        load = self.probe()
        try:
            if load is None:
                self.consul.agent.check.ttl_fail(self.ttl_check, notes="ComfyUI probe failed")
                self._ttl_at = 0.0
                return
            current = node_meta.meta(load, settings.slots, settings.weight,
                                     self._versions(), settings.listen_port)
            now = time.monotonic()
            if node_meta.reregister_due(self._meta, current, now - self._meta_at,
                                        settings.meta_policy):
                self.register(load)
            elif not self._ttl_at or node_meta.ttl_pass_due(
                    now - self._ttl_at, settings.ttl_s, settings.probe_interval_s):
                self._pass_ttl()
            if now - self._wish_at >= settings.wish_interval_s - 0.05:
                self._wish_at = now
                self.follow_wish()
        except Exception:  # Consul away or restarted: keep probing, register again when back
            self._meta, self._meta_at, self._ttl_at = None, 0.0, 0.0
            event(log, "sidecar.consul_unreachable", logging.WARNING, exc_info=True)

    def _pass_ttl(self) -> None:
        # Always the same note: a changed output is a catalog write; the same one stays local.
        self.consul.agent.check.ttl_pass(self.ttl_check, notes="ComfyUI answers")
        self._ttl_at = time.monotonic()

    # --- availability (operators' cordon and drain) ---------------------------------------------
    def follow_wish(self) -> None:
        """Apply the state an operator asked for (KV, written by the gateway's admin API)."""
        try:
            _, entry = self.consul.kv.get(availability.kv_key(self.service_id))
        except consul.ACLPermissionDenied:
            if not self._wish_unreadable:  # say it once: the token lacks key read
                event(log, "sidecar.wish_unreadable", logging.WARNING,
                      key=availability.kv_key(self.service_id),
                      fix="give the sidecar's token key_prefix comfy-service/nodes/ read")
            self._wish_unreadable = True
            return
        wanted = availability.parse_wanted(entry["Value"] if entry else None)
        if wanted != self.availability:
            self.set_availability(wanted, "requested by an operator")

    def set_availability(self, state: str, why: str) -> None:
        """Put the service in (or out of) Consul maintenance with a reason naming the state.
        Enabling maintenance that is already on keeps the old reason, so it is cleared first."""
        service = self.consul.agent.service
        if self.availability != availability.READY:
            self._leave_maintenance(final=state == availability.READY)
        if state != availability.READY:
            service.maintenance(self.service_id, True,
                                reason=availability.maintenance_reason(state, why))
        previous, self.availability, self._availability_why = self.availability, state, why
        event(log, "sidecar.availability", service_id=self.service_id, state=state,
              previous=previous, why=why)

    def _leave_maintenance(self, final: bool) -> None:
        """Consul 1.16 forgets the ACL token of a maintenance check it removes and deregisters
        it from the catalog with the anonymous token, which default-deny refuses ("Check
        deregistration blocked by ACLs"): the node would stay in maintenance for everyone but
        its own agent. So when maintenance ends for good, the sidecar also deregisters the
        check from the catalog with its own token (service:write allows it)."""
        check_id = f"{c.SERVICE_MAINTENANCE_CHECK}{self.service_id}"
        check = self.consul.agent.checks().get(check_id) if final else None
        self.consul.agent.service.maintenance(self.service_id, False)
        if check is None:
            return
        try:
            # Not py-consul's catalog.deregister: it sends a WriteRequest field Consul 1.16
            # refuses ("json: unknown field").
            self.consul.http.put(CB.boolean(), "/v1/catalog/deregister",
                                 headers=self.consul.prepare_headers(None),
                                 data=json.dumps({"Node": check["Node"], "CheckID": check_id}))
        except consul.ConsulException:
            event(log, "sidecar.maintenance_not_cleared", logging.WARNING, exc_info=True,
                  check_id=check_id, effect="the catalog may show the node in maintenance")

    # --- probes and registration ---------------------------------------------------------------
    def probe(self) -> node_meta.NodeLoad | None:
        started = time.perf_counter()
        # ComfyUI's version changes only with a restart, which fails a probe first.
        stats_due = started - self._stats_at >= STATS_INTERVAL_S
        try:
            queue = self.http.get("/queue").json()
            stats = self.http.get("/system_stats").json() if stats_due else None
            PROBE_SECONDS.observe(time.perf_counter() - started)
        except (httpx.HTTPError, ValueError) as exc:
            COMFYUI_UP.set(0)
            self._stats_at = -STATS_INTERVAL_S
            event(log, "sidecar.probe_failed", logging.WARNING, reason=type(exc).__name__)
            return None
        if stats is not None:
            self._stats_at = started
            self.comfyui_version = str(stats.get("system", {}).get("comfyui_version",
                                                                   "unknown"))
        gpu = self.reader.read()
        load = node_meta.NodeLoad(len(queue.get("queue_running", [])),
                                  len(queue.get("queue_pending", [])), gpu)
        COMFYUI_UP.set(1)
        QUEUE_RUNNING.set(load.queue_running)
        QUEUE_PENDING.set(load.queue_pending)
        if gpu is not None:
            labels = {"gpu": str(gpu.index), "UUID": gpu.uuid}
            GPU_UTIL.labels(**labels).set(gpu.utilization_pct)
            FB_USED.labels(**labels).set(gpu.memory_used_mb)
            FB_FREE.labels(**labels).set(gpu.memory_total_mb - gpu.memory_used_mb)
            if gpu.temperature_c is not None:
                GPU_TEMP.labels(**labels).set(gpu.temperature_c)
            if gpu.power_w is not None:
                POWER.labels(**labels).set(gpu.power_w)
        return load

    def _versions(self) -> dict[str, str]:
        return {"comfyui": self.comfyui_version, "sidecar": __version__}

    def register(self, load: node_meta.NodeLoad) -> None:
        settings = self.settings
        values = node_meta.meta(load, settings.slots, settings.weight, self._versions(),
                                settings.listen_port)
        # Consul's own look at ComfyUI, a second opinion: the TTL check already fails at the
        # first failed probe, so once per TTL is enough (each is a request from the agent).
        interval = max(1, int(max(settings.probe_interval_s, settings.ttl_s)))
        http_check: dict[str, Any] = consul.Check.http(
            f"{settings.comfyui_url}/queue", interval=f"{interval}s",
            timeout="2s", deregister=settings.deregister_after)
        ttl_check: dict[str, Any] = consul.Check.ttl(f"{settings.ttl_s:g}s")
        ttl_check.update({"CheckID": self.ttl_check, "Name": "ComfyUI makes progress",
                          "DeregisterCriticalServiceAfter": settings.deregister_after})
        self.consul.agent.service.register(
            settings.service_name, service_id=self.service_id, address=settings.comfyui_host,
            port=settings.comfyui_port, tags=node_meta.tags(load, settings.capabilities),
            meta=values, check=http_check | {"CheckID": f"{self.service_id}:http",
                                             "Name": "ComfyUI answers HTTP"},
            extra_checks=[ttl_check])
        self._pass_ttl()
        self._meta, self._meta_at = values, time.monotonic()
        if self.availability != availability.READY:  # a Consul that restarted forgot it
            self.consul.agent.service.maintenance(
                self.service_id, True,
                reason=availability.maintenance_reason(self.availability,
                                                       self._availability_why))


def wait_for_gpu_uuid(settings: SidecarSettings) -> str | None:
    """Under Nomad the sidecar starts before ComfyUI (prestart), so the GPU's UUID may not be
    written yet: wait for it a bounded time, then fall back to GPU_INDEX."""
    if not settings.gpu_uuid_file:
        return None
    try:
        return wait_until(lambda: assigned_uuid(settings.gpu_uuid_file), GPU_UUID_WAIT_S,
                          f"the GPU UUID in {settings.gpu_uuid_file}", interval=0.5)
    except TimeoutError:
        event(log, "sidecar.gpu_uuid_missing", logging.WARNING, file=settings.gpu_uuid_file,
              fallback_index=settings.gpu_index)
        return None


def shared_consul(settings: SidecarSettings) -> consul.Consul:
    """One Consul client for every ComfyUI a process follows, at most CONSUL_CONNECTIONS
    connections (a thread waits for a free one): Consul refuses an address more than 200 at
    once (limits.http_max_conns_per_client, HTTP 429), which a client per instance passed at
    200 instances; half of that leaves room for the host's other clients. The session is
    shared by threads; Consul sets no cookies."""
    client = sync_client(settings.consul_addr, settings.consul_token)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=CONSUL_CONNECTIONS, pool_block=True)
    for scheme in ("http://", "https://"):
        client.http.session.mount(scheme, adapter)
    return client


def main(argv: Sequence[str] | None = None) -> int:
    settings = SidecarSettings.from_env(os.environ)
    logs.setup(os.environ.get("LOG_LEVEL", "INFO").upper(), os.environ.get("LOG_FORMAT", "json"))
    reader, why_not_nvml = open_reader(settings.gpu_index, settings.gpu_readings_file,
                                       wait_for_gpu_uuid(settings))
    if why_not_nvml:
        event(log, "sidecar.no_nvml", logging.WARNING, reason=why_not_nvml,
              effect="reporting ComfyUI queue load only")
    _, open_files = raise_open_files_limit()
    need = len(settings.comfyui_urls) + CONSUL_CONNECTIONS + 64
    if open_files < need:
        event(log, "sidecar.open_files_low", logging.WARNING, limit=open_files,
              instances=len(settings.comfyui_urls), need=need)
    if settings.listen_port:
        start_http_server(settings.listen_port, addr=settings.listen_host)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    failed: list[str] = []

    def follow(sidecar: Sidecar) -> None:
        try:
            sidecar.run(stop)
        except Exception as exc:  # one instance failing stops the process: Nomad restarts it
            failed.append(sidecar.service_id)
            event(log, "sidecar.failed", logging.ERROR, service_id=sidecar.service_id,
                  reason=f"{type(exc).__name__}: {exc}")
            stop.set()

    shared = shared_consul(settings)
    threads = [threading.Thread(target=follow, args=(Sidecar(instance, reader, shared),),
                                name=f"sidecar:{instance.comfyui_url}")
               for instance in settings.instances()]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.5)
    finally:
        reader.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
