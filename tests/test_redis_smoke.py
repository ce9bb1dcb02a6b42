"""Smoke test: a real redis-server, started by the test, carries a Dramatiq message end to end."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.processes import RedisProcess


def test_redis_server_starts_and_answers(redis_server: RedisProcess) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    assert client.ping()
    client.set("comfy-service:smoke", "ok", ex=60)
    assert client.get("comfy-service:smoke") == b"ok"


def test_a_dramatiq_message_goes_through_the_redis_broker(redis_server: RedisProcess) -> None:
    # Given a broker on the test's own redis-server and an actor that records its argument
    broker = RedisBroker(url=redis_server.url)
    store = redis.Redis.from_url(redis_server.url, socket_timeout=5)

    def record(value: str) -> None:
        store.rpush("comfy-service:smoke:seen", value)

    actor = dramatiq.actor(record, broker=broker, queue_name="smoke", max_retries=0)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # When a message is sent
        actor.send("hello")
        broker.join("smoke", timeout=10_000)
        # Then the worker ran it exactly once
        assert store.lrange("comfy-service:smoke:seen", 0, -1) == [b"hello"]
    finally:
        worker.stop()
        broker.close()
