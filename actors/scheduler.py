"""The worker's scheduling loop: late binding of ready tasks to free node slots, leases, adoption.

Three phases (start links and loops; run until stopped; hand off and close). Binding happens
the moment a slot frees (the finishing task wakes the loop) or new work arrives (a Redis
pub/sub wake-up from whichever worker admitted it), so a node's second slot is refilled while
its first prompt still runs and the GPU never waits for a round trip.

Each worker follows its own share of the nodes (actors/partition.py over the live workers of
actors/membership.py): it links to, binds to and reports on those only. It also keeps a link to
any other node where it still runs a task (one it bound before the share moved, or adopted from
a dead worker) until that task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors import tasks
from actors.discovery import DiscoveredNode, static_nodes, watch_consul
from actors.dispatch import Need, NodeView, gpu_of, load_from_meta, need_of
from actors.execution import TaskRun, WorkerContext
from actors.fleet_index import FleetIndex
from actors.membership import Membership
from actors.node_inputs import NodeInputs
from actors.node_link import NodeLink
from actors.partition import owned_by
from actors.retention import BATCH as RETENTION_BATCH
from actors.retention import Retention
from actors.slot_counts import SlotCounts
from actors.store import TaskStore
from actors.uploads import UploadStore
from actors.webhooks import WebhookDelivery
from comfy_service import constants as c
from comfy_service import metrics
from comfy_service.availability import DRAINING, READY
from comfy_service.logs import event
from comfy_service.settings import Settings
from comfy_service.storage import BlobStore

log = logging.getLogger("actors.scheduler")

POLL_S = 0.5               # fallback when no wake-up arrives
LOOKAHEAD = 16             # ready tasks considered per binding (a task no free node can run
                           # does not hold up the ones behind it)
SNAPSHOT_S = 1.0
MEMBER_BEAT_S = 1.0        # how often a worker renews its membership and looks at the others
# How long a worker that stopped renewing keeps its share. Generous: a busy event loop must
# not lose its share (its nodes would move and come back), and a crashed worker's running
# tasks do not wait for it (they are adopted after their lease); only new binds on its
# nodes do, until this passes. A worker that stops cleanly leaves at once.
MEMBER_TTL_S = 10.0


RETENTION_BATCHES_PER_ROUND = 10


async def _never() -> None:
    await asyncio.Event().wait()


class Scheduler:
    def __init__(self, settings: Settings, redis: aioredis.Redis, blobs: BlobStore) -> None:
        self.settings = settings
        self.redis = redis
        self.ctx = WorkerContext(
            settings, TaskStore(redis, settings.task_ttl_s), {}, blobs,
            Retention(redis, blobs, settings.task_ttl_s),
            NodeInputs(UploadStore(redis, settings.upload_ttl_s), blobs,
                       settings.max_upload_bytes))
        self._loops: list[asyncio.Task[Any]] = []
        self._info_published: set[str] = set()
        self._meta: dict[str, dict[str, object]] = {}
        self._needs: dict[str, Need] = {}
        self._unavailable: dict[str, str] = {}  # cordoned or draining nodes and which
        self._gpus: dict[str, dict[str, object] | None] = {}  # what each sidecar reports
        self._caps: dict[str, tuple[Any, frozenset[str] | None, frozenset[str] | None]] = {}
        self._learned: dict[str, float | None] = {}  # speeds from actors/speeds.py, per second
        self._link_count = 0
        self._nodes: dict[str, DiscoveredNode] = {}  # every node discovery reports
        self._workers: tuple[str, ...] = ()          # the live workers, this one included
        self._mine: tuple[str, ...] = ()             # the nodes this worker follows, sorted
        self._share_of: tuple[tuple[str, ...], frozenset[str]] | None = None
        # The share as the dispatcher sees it (see "the share's slots" below).
        self._fleet = FleetIndex()
        self._used = SlotCounts()            # slots taken on each node of the share
        self._changed: set[str] = set()      # nodes whose view is to be built again
        self._recount_due = True             # the share changed: read every count first
        self.ctx.on_release = self._released
        self.membership = Membership(redis, settings.worker_id, max(
            3 * settings.lease_ttl_s, MEMBER_TTL_S))

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        try:  # know the other workers before taking a share of the nodes
            self._workers = await self.membership.beat()
        except RedisError:
            event(log, "worker.membership_failed", logging.WARNING, exc_info=True)
        if settings.discovery == "consul":
            discovery = watch_consul(settings.consul_addr, settings.consul_service,
                                     settings.consul_token, self.apply_nodes)
        else:
            await self.apply_nodes(static_nodes(settings.comfyui_urls))
            discovery = _never()  # a static list never changes
        self._loops = [asyncio.create_task(coro, name=name) for name, coro in (
            ("fill", self._fill_forever()), ("leases", self._renew_forever()),
            ("adopt", self._adopt_forever()), ("pubsub", self._listen_forever()),
            ("sweep", self._sweep_forever()), ("discovery", discovery),
            ("retention", self._retention_forever()),
            ("snapshots", self._snapshot_forever()), ("members", self._members_forever()),
            ("webhooks", WebhookDelivery(settings, self.redis, self.ctx.store).run_forever()))]
        event(log, "worker.started", worker=self.settings.worker_id, discovery=settings.discovery,
              nodes=len(self._nodes), following=len(self._mine), workers=len(self._workers),
              slots=self.settings.node_slots)
        await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        owned = list(self.ctx.owned)
        runs = [asyncio.ensure_future(asyncio.sleep(0))]
        for task_id in owned:
            run = self.ctx.owned.get(task_id)
            if run is not None and run.handle is not None:
                run.handle.cancel()
                runs.append(run.handle)
        await asyncio.gather(*runs, return_exceptions=True)
        if owned:  # let another worker adopt them at once rather than after the lease
            await self.redis.zadd(c.LEASES_KEY, {task_id: 0 for task_id in owned}, xx=True)
        with contextlib.suppress(RedisError):  # the others take our nodes at their next beat
            await self.membership.leave()
        for link in self.ctx.links.values():
            await link.stop()
        event(log, "worker.stopped", worker=self.settings.worker_id, handed_off=len(owned))

    # --- nodes -----------------------------------------------------------------------------------
    async def apply_nodes(self, nodes: list[DiscoveredNode]) -> None:
        """A new view of the nodes: start links to new ones; fail over from vanished ones."""
        current = {node.name: node for node in nodes}
        unavailable = {node.name: node.availability for node in nodes if not node.takes_work}
        for name, state in unavailable.items():
            if self._unavailable.get(name) != state:
                event(log, f"node.{state}", node=name,
                      tasks=sum(1 for run in self.ctx.owned.values() if run.link.name == name))
        for name in set(self._unavailable) - set(unavailable):
            if name in current:
                event(log, "node.ready", node=name)
        self._unavailable = unavailable
        self.ctx.draining.clear()
        self.ctx.draining.update(name for name, state in unavailable.items() if state == DRAINING)
        for run in list(self.ctx.owned.values()):
            if run.link.name in self.ctx.draining:
                run.nudge()  # prompts still waiting there go back in line now
        removed = [name for name in self._nodes if name not in current]
        for name, node in current.items():
            self._meta[name] = load_from_meta(node.meta)
            self._gpus[name] = gpu_of(node.meta)
            if name not in self._nodes:
                event(log, "node.added", node=name, url=node.url)
        self._nodes = current
        self._recount_due = True  # Meta, availability or the share changed
        unlinked = self._relink()
        for name in removed:
            self._meta.pop(name, None)
            self._gpus.pop(name, None)
            self._caps.pop(name, None)
            self.ctx.speeds.forget(name)
            await self.ctx.store.forget_node(name)
            event(log, "node.removed", logging.WARNING, node=name,
                  tasks=sum(1 for run in self.ctx.owned.values() if run.link.name == name))
        # A removed node's tasks are told at once that the node is lost (stopping its link):
        # they go back in line with one attempt spent and run elsewhere, their slots released.
        await self._unlink(unlinked)
        self.ctx.wake.set()

    def _relink(self) -> list[NodeLink]:
        """Follow this worker's share of the nodes: link to its nodes, let go of the others
        except where a task of ours still runs. Answers the links let go of, to be stopped;
        nothing here awaits, so the links always cover the share."""
        share_of = (self._workers, frozenset(self._nodes))
        if share_of == self._share_of:  # hashing every node each beat would cost O(nodes)
            mine = frozenset(self._mine)
        else:
            self._share_of = share_of
            mine = owned_by(self.settings.worker_id, self._nodes, self._workers)
        if set(self._mine) != mine:
            self._recount_due = True
            event(log, "worker.share", worker=self.settings.worker_id, following=len(mine),
                  nodes=len(self._nodes), workers=len(self._workers))
        for name in sorted(mine - set(self.ctx.links)):
            self._link(name)
        self._mine = tuple(sorted(mine))
        busy = {run.link.name for run in self.ctx.owned.values()}
        drop = [name for name in self.ctx.links
                if name not in self._nodes or (name not in mine and name not in busy)]
        return [self.ctx.links.pop(name) for name in drop]

    def _link(self, name: str) -> NodeLink:
        self._link_count += 1
        link = NodeLink(name, self._nodes[name].url,
                        f"cs-{self.settings.worker_id}-{self._link_count}",
                        on_health=self._health_changed)
        self.ctx.links[name] = link
        link.start()
        return link

    async def _unlink(self, links: list[NodeLink]) -> None:
        for link in links:
            for gauge in (metrics.NODE_UP, metrics.NODE_HEALTHY, metrics.SLOTS_USED,
                          metrics.SLOTS_FREE, metrics.NODE_PROGRESS, metrics.NODE_SPEED):
                with contextlib.suppress(KeyError):
                    gauge.remove(link.name)
            self._info_published.discard(link.name)
            await link.stop()

    async def _members_forever(self) -> None:
        """Renew this worker's membership; when workers come or go, or a task on another
        worker's node has ended, follow the new share."""
        while True:
            await asyncio.sleep(MEMBER_BEAT_S)
            try:
                self._workers = await self.membership.beat()
                await self._unlink(self._relink())
            except Exception:
                event(log, "worker.membership_failed", logging.WARNING, exc_info=True)

    def _capabilities(self, name: str, info: dict[str, Any] | None
                      ) -> tuple[frozenset[str] | None, frozenset[str] | None]:
        """A node's classes and checkpoints, from its /object_info; worked out once per
        object_info it reports, not per bind (hundreds of classes times hundreds of nodes)."""
        cached = self._caps.get(name)
        if cached is not None and cached[0] is info:
            return cached[1], cached[2]
        classes = frozenset(info) if info else None
        checkpoints = None
        if info and "CheckpointLoaderSimple" in info:
            spec = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            checkpoints = frozenset(spec) if isinstance(spec, list) else None
        self._caps[name] = (info, classes, checkpoints)
        return classes, checkpoints

    def _view(self, name: str) -> NodeView | None:
        """The node as the dispatcher sees it now; None when not linked (let go of)."""
        link = self.ctx.links.get(name)
        if link is None or name not in self._used:
            return None
        classes, checkpoints = self._capabilities(name, link.object_info)
        # A cordoned or draining node finishes what it holds but is offered nothing new.
        healthy = link.healthy and name not in self._unavailable
        fields = {"weight": self._speed(name)[0], **self._meta.get(name, {})}
        return NodeView(name, healthy, self.settings.node_slots, self._used[name],
                        classes=classes, checkpoints=checkpoints,
                        **fields)  # type: ignore[arg-type]

    def _speed(self, name: str) -> tuple[float, str]:
        """The node's relative speed for the dispatcher, and where it comes from: NODE_WEIGHT
        when its sidecar says so, else what this worker learned, else typical (1.0)."""
        configured = self._meta.get(name, {}).get("weight")
        if isinstance(configured, float):
            return configured, "configured"
        learned = self._learned.get(name)
        return (learned, "learned") if learned is not None else (1.0, "default")

    async def _need(self, task_id: str) -> Need | None:
        if task_id not in self._needs:
            record = await self.ctx.store.get(task_id)
            if record is None:
                return None
            if len(self._needs) > 10_000:
                self._needs.clear()
            self._needs[task_id] = need_of(record.graph)
        return self._needs[task_id]

    # --- the share's slots and views ------------------------------------------------------------
    # Counted here (actors/slot_counts.py) and kept in dispatch order (actors/fleet_index.py):
    # reading every node's count and building every node's view per bind pass cost O(share)
    # a task. A node's view is built again when something about it changes; every second (the
    # snapshot) all of them are, with the counts read from Redis.
    def _released(self, name: str) -> None:
        if self._used.add(name, -1):
            self._changed.add(name)
        self.ctx.wake.set()

    def _health_changed(self, name: str) -> None:
        self._changed.add(name)
        self.ctx.wake.set()  # a node came up: bind to it now, not at the next poll

    async def _read_counts(self, names: list[str], everything: bool = False) -> None:
        """Take counts from Redis; with `everything`, every node's view is built again (its
        health, Meta, speed and kind as well)."""
        asked_at = self._used.asking()
        used = await self.ctx.store.slots_used(names)
        self._take_counts(used, asked_at, everything)

    def _take_counts(self, used: dict[str, int], asked_at: int, everything: bool) -> None:
        self._changed |= self._used.read(used, asked_at, self._mine)
        if everything:
            self._changed.update(self._fleet.names(), self._used.names())

    def _update_fleet(self) -> None:
        changed, self._changed = self._changed, set()
        for name in changed:
            view = self._view(name)
            if view is None:
                self._fleet.remove(name)
            else:
                self._fleet.put(view)

    def _choose(self, need: Need, waiting: int) -> NodeView | None:
        """The dispatcher's choice, checked against the chosen node's current state (its link
        may have gone down since its view was built): a node whose view was stale is updated
        and the choice made again."""
        while True:
            chosen = self._fleet.choose(need, waiting)
            if chosen is None:
                return None
            now = self._view(chosen.name)
            if now == chosen:
                return chosen
            if now is None:
                self._fleet.remove(chosen.name)
            else:
                self._fleet.put(now)

    # --- binding -------------------------------------------------------------------------------
    async def fill_slots(self) -> None:
        store, slots, fleet = self.ctx.store, self.settings.node_slots, self._fleet
        while True:
            if self._recount_due:
                self._recount_due = False
                await self._read_counts(list(self._mine), everything=True)
            self._update_fleet()
            if not fleet.open:
                if await store.ready_count():
                    metrics.BIND_DECISIONS.labels("no_free_slot").inc()
                return
            waiting = await store.ready_count()
            bound, releases = 0, self.ctx.releases
            # Bind down the looked-at tasks, counting our own binds as they land.
            for task_id in await store.peek_ready(LOOKAHEAD):
                if self.ctx.releases != releases:
                    break  # a slot freed meanwhile (perhaps on a faster node): look again
                self._update_fleet()
                if not fleet.open:
                    break
                need = await self._need(task_id)
                chosen = self._choose(need, waiting) if need is not None else None
                if chosen is None:
                    continue
                if not await store.bind(task_id, chosen.name, slots, self.settings.worker_id,
                                        self.settings.lease_ttl_s):
                    await self._read_counts([chosen.name])  # perhaps counted too free
                    continue
                if self._used.add(chosen.name, +1):
                    self._changed.add(chosen.name)
                self._needs.pop(task_id, None)
                metrics.BIND_DECISIONS.labels("bound").inc()
                link = self.ctx.links.get(chosen.name)
                if link is None and chosen.name in self._nodes:
                    link = self._link(chosen.name)  # the share moved during the bind
                if link is None:  # the node was removed during the bind
                    await store.release(chosen.name, task_id)
                    self._released(chosen.name)
                    record = await store.get(task_id)
                    if record is not None and not record.final:
                        await store.enqueue_ready(record)
                    continue
                self._start(TaskRun(self.ctx, task_id, link))
                bound += 1
                waiting -= 1
            if not bound:
                return

    def _start(self, run: TaskRun) -> None:
        self.ctx.owned[run.task_id] = run
        run.handle = asyncio.create_task(run.run(), name=f"task:{run.task_id}")

    async def _fill_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.ctx.wake.wait(), POLL_S)
            except TimeoutError:
                pass
            self.ctx.wake.clear()
            try:
                await self.fill_slots()
            except Exception:
                event(log, "worker.fill_failed", logging.ERROR, exc_info=True)
                await asyncio.sleep(POLL_S)

    # --- leases and adoption -------------------------------------------------------------------
    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 3)
            try:
                await self.ctx.store.renew(list(self.ctx.owned), self.settings.lease_ttl_s)
            except Exception:
                event(log, "worker.renew_failed", logging.WARNING, exc_info=True)

    async def _adopt_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.lease_ttl_s / 3))
            try:
                await self.adopt_lapsed()
            except Exception:
                event(log, "worker.adopt_failed", logging.WARNING, exc_info=True)

    async def adopt_lapsed(self) -> None:
        store = self.ctx.store
        for task_id in await store.lapsed():
            if task_id in self.ctx.owned:
                continue
            node = await store.adopt(task_id, self.settings.worker_id, self.settings.lease_ttl_s)
            if node is None:
                continue
            record = await store.get(task_id)
            if record is not None and not record.final and record.node is None:
                # Its worker died between taking the slot and recording it: nothing reached
                # the node, so the task simply goes back in line.
                await store.release(node, task_id)
                self._released(node)
                await store.enqueue_ready(record)
                event(log, "task.requeued_unstarted", task_id=task_id, node=node)
                continue
            # Its node may be another worker's share: link to it until the task ends (taken
            # together with starting the run, nothing awaited between, so it is not let go of).
            link = self.ctx.links.get(node)
            if link is None and node in self._nodes and record is not None and not record.final:
                link = self._link(node)
            if record is None or record.final or link is None:
                await store.release(node, task_id)
                self._released(node)
                if record is not None and not record.final:
                    await self._node_unknown(record, node)
                continue
            self._start(TaskRun(self.ctx, task_id, link, adopted=True))

    async def _sweep_forever(self) -> None:
        """Admit tasks whose admission message never came (a gateway that died between
        storing a task and sending it): accepted means admitted, sooner or later."""
        period = 2 * self.settings.lease_ttl_s  # the same order as our other recoveries
        while True:
            await asyncio.sleep(period)
            try:
                for task_id in await self.ctx.store.unadmitted(older_than_s=period):
                    record = await self.ctx.store.get(task_id)
                    if record is None or record.status != tasks.QUEUED:
                        await self.ctx.store.forget_accepted(task_id)
                    elif await self.ctx.store.admit(record):
                        event(log, "task.admitted_by_sweep", task_id=task_id)
                        self.ctx.wake.set()
            except Exception:
                event(log, "worker.sweep_failed", logging.WARNING, exc_info=True)

    async def _retention_forever(self) -> None:
        """Delete the stored objects of expired tasks and uploads, a bounded batch at a time;
        safe with several workers (see actors.retention)."""
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                for _ in range(RETENTION_BATCHES_PER_ROUND):
                    if (await self.ctx.retention.sweep()).claimed < RETENTION_BATCH:
                        break
            except Exception:
                event(log, "worker.retention_failed", logging.WARNING, exc_info=True)

    async def _node_unknown(self, record: tasks.TaskRecord, node: str) -> None:
        """An orphan on a node this worker does not know (removed from the configuration):
        treated like a lost node, so the task still ends or runs elsewhere."""
        def retry_or_fail(current: tasks.TaskRecord) -> tasks.TaskRecord:
            if current.attempts >= self.settings.max_attempts:
                return tasks.failed(current, {"code": "node_lost", "message":
                                              f"node {node} is no longer configured",
                                              "details": None}, tasks.utc_now())
            return tasks.requeued(current)
        try:
            updated = await self.ctx.store.update(record.task_id, retry_or_fail)
        except tasks.InvalidTransition:
            return
        if updated is not None and updated.status == tasks.QUEUED:
            metrics.FAILOVERS.inc()
            await self.ctx.store.enqueue_ready(updated)
            self.ctx.wake.set()
        event(log, "task.orphaned", logging.WARNING, task_id=record.task_id, node=node)

    # --- wake-ups and cancels from other processes ---------------------------------------------
    async def _listen_forever(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(c.WAKE_CHANNEL, c.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        channel = message["channel"]
                        channel = channel.decode() if isinstance(channel, bytes) else channel
                        if channel == c.WAKE_CHANNEL:
                            self.ctx.wake.set()
                        else:
                            data = message["data"]
                            task_id = data.decode() if isinstance(data, bytes) else data
                            run = self.ctx.owned.get(task_id)
                            if run is not None:
                                run.request_cancel()
            except asyncio.CancelledError:
                raise
            except Exception:
                event(log, "worker.pubsub_lost", logging.WARNING, exc_info=True)
                await asyncio.sleep(1.0)

    def _node_metrics(self, name: str, up: bool, used: int) -> None:
        healthy = up and name not in self._unavailable
        metrics.NODE_UP.labels(name).set(1 if up else 0)
        metrics.NODE_HEALTHY.labels(name).set(1 if healthy else 0)
        metrics.SLOTS_USED.labels(name).set(used)
        metrics.SLOTS_FREE.labels(name).set(max(0, self.settings.node_slots - used)
                                            if healthy else 0)
        metrics.NODE_PROGRESS.labels(name)  # the series exists (at 0) before the first task

    async def _snapshot_forever(self) -> None:
        while True:
            try:
                store = self.ctx.store
                links = dict(self.ctx.links)  # links come and go while this awaits
                asked_at = self._used.asking()
                used = await store.slots_used(list(links))
                self._learned = self.ctx.speeds.speeds(links)
                self._take_counts(used, asked_at, everything=True)  # and the speeds learned
                snapshots: dict[str, dict[str, Any]] = {}
                for name, link in links.items():
                    speed, speed_source = self._speed(name)
                    metrics.NODE_SPEED.labels(name).set(speed)
                    snapshots[name] = {"name": name, "url": link.base_url, "healthy": link.healthy,
                                       "slots": self.settings.node_slots, "slots_used": used[name],
                                       "queue_remaining": link.queue_remaining,
                                       "availability": self._unavailable.get(name, READY),
                                       "speed": round(speed, 3), "speed_source": speed_source,
                                       "speed_samples": self.ctx.speeds.samples(name),
                                       "gpu": self._gpus.get(name),
                                       "worker": self.settings.worker_id}
                    self._node_metrics(name, link.healthy, used[name])
                    if link.object_info is not None and name not in self._info_published:
                        await store.publish_object_info(name, link.object_info)
                        self._info_published.add(name)
                await store.publish_nodes(snapshots)
                metrics.NODES_HEALTHY.set(sum(1 for name in self._mine
                                              if name in links and links[name].healthy
                                              and name not in self._unavailable))
                metrics.TASKS_WAITING.set(await store.ready_count())
                oldest = await store.oldest_waiting_ms()
                metrics.OLDEST_WAITING_AGE.set(
                    0 if oldest is None else max(0.0, time.time() - oldest / 1000))
                metrics.REDIS_UP.set(1)
            except RedisError:
                metrics.REDIS_UP.set(0)
                event(log, "worker.snapshot_failed", logging.WARNING, exc_info=True)
            except Exception:
                event(log, "worker.snapshot_failed", logging.WARNING, exc_info=True)
            await asyncio.sleep(SNAPSHOT_S)

