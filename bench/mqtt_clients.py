"""Receive rate of candidate MQTT clients draining a QoS 1 backlog, acknowledging each
message only after a simulated batch commit, as the gateway must; and of the gateway's
own subscribers (MQTT 5 on the mqtt5 codec; MQTT 3.1.1 on paho, served by the asyncio
loop), with the CPU time each takes a message.

First, a yardstick of the machine's speed, to compare figures taken on different
machines: the CPU time paho's callbacks take a small QoS 0 message with a handler that
does nothing, offered at a pace it keeps up with; and the most such messages they take
a second, as the target's reference machine was described.

    .venv/bin/python -m bench.mqtt_clients [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.load import connect, remaining_length
from gateway.clock import SystemClock
from gateway.config import MqttConfig
from gateway.ingest.mqtt import subscriber_for
from simulators.publisher import SimulationOptions, run_simulation
from tests.integration.services import MosquittoService

TOPICS = ("community/#", "vendor/#")
BATCH = 2000
# How long the gateway's subscriber lingers for a fuller batch: its commit interval.
LINGER_S = 0.05


YARDSTICK_TOPIC = "yardstick/smoke"
YARDSTICK_PAYLOAD = b'{"ts":1767225600000,"seq":1,"smoke_obscuration":0.1,"battery_pct":88}'
YARDSTICK_RATE_MSG_S = 20_000
YARDSTICK_S = 5.0
# More than paho's callbacks take on any machine seen: the broker queues the rest.
FLOOD_RATE_MSG_S = 150_000
FLOOD_S = 8.0


def _offer_qos0(host: str, port: int, rate_msg_s: float, seconds: float) -> None:
    """Small QoS 0 publishes, on time (in a process of its own)."""
    sock = connect(host, port, "yardstick-load")
    topic = YARDSTICK_TOPIC.encode()
    body = len(topic).to_bytes(2, "big") + topic + YARDSTICK_PAYLOAD
    per_write = max(1, int(rate_msg_s / 200))
    chunk = (b"\x30" + remaining_length(len(body)) + body) * per_write
    began = time.monotonic()
    sent = 0
    while sent < rate_msg_s * seconds:
        sock.sendall(chunk)
        sent += per_write
        ahead_s = began + sent / rate_msg_s - time.monotonic()
        if ahead_s > 0:
            time.sleep(ahead_s)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


def _counting_client(broker: MosquittoService, client_id: str) -> tuple[paho.Client, list[int]]:
    """A paho client subscribed to the small QoS 0 messages, counting them in [0]."""
    received = [0]

    def on_message(_c: object, _u: object, _m: object) -> None:
        received[0] += 1

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.subscribe(YARDSTICK_TOPIC, 0)
    client.loop_start()
    time.sleep(0.5)  # subscribed
    return client, received


def yardstick(broker: MosquittoService) -> tuple[float, float]:
    """The share of the offered messages paho's callbacks received, and the CPU µs they
    took a message: 1,000,000 / that is what one core of the machine could take."""
    client, received = _counting_client(broker, "yardstick")
    cpu_began = time.process_time()
    load = multiprocessing.Process(
        target=_offer_qos0, args=(broker.host, broker.port, YARDSTICK_RATE_MSG_S, YARDSTICK_S)
    )
    load.start()
    load.join()
    while True:
        before = received[0]
        time.sleep(0.5)
        if received[0] == before:
            break
    cpu_us = (time.process_time() - cpu_began) / max(received[0], 1) * 1e6
    client.loop_stop()
    client.disconnect()
    return received[0] / (YARDSTICK_RATE_MSG_S * YARDSTICK_S), cpu_us


def paho_qos0_most(broker: MosquittoService) -> float:
    """The msg/s paho's callbacks take of small QoS 0 messages offered faster than they
    take them, with a handler that does nothing: the figure the target's reference
    machine was described by (about 40,000). Counted in the middle of the flood."""
    client, received = _counting_client(broker, "flood")
    load = multiprocessing.Process(
        target=_offer_qos0, args=(broker.host, broker.port, FLOOD_RATE_MSG_S, FLOOD_S)
    )
    load.start()
    time.sleep(FLOOD_S / 4)
    before, began = received[0], time.perf_counter()
    time.sleep(FLOOD_S / 2)
    rate = (received[0] - before) / (time.perf_counter() - began)
    load.join()
    client.loop_stop()
    client.disconnect()
    return rate


def preload(broker: MosquittoService, messages: int) -> int:
    report = run_simulation(
        SimulationOptions(
            port=broker.port,
            devices=2000,
            seed=1,
            seconds=None,
            max_messages=messages,
            rate_msg_s=None,
            processes=2,
            client_id_prefix=f"preload-{time.monotonic_ns()}",
        )
    )
    return report.total_acknowledged


def paho_rate(broker: MosquittoService, messages: int, v5: bool) -> float:
    client_id = f"paho-{'v5' if v5 else 'v311'}"

    def make() -> paho.Client:
        return paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )

    def connect(c: paho.Client) -> None:
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600
            props.ReceiveMaximum = 10_000
        c.connect(broker.host, broker.port, clean_start=False if v5 else 3, properties=props)

    c = make()
    connect(c)
    c.subscribe([(t, 1) for t in TOPICS])
    c.loop_start()
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    expected = preload(broker, messages)
    pending: deque[int] = deque()
    c = make()
    c.on_message = lambda _c, _u, m: pending.append(m.mid)
    connect(c)
    c.loop_start()
    received = 0
    began = 0.0
    while received < expected:
        if not pending:
            time.sleep(0.005)
            continue
        if not began:
            began = time.perf_counter()
        mids = [pending.popleft() for _ in range(min(BATCH, len(pending)))]
        for mid in mids:
            c.ack(mid, 1)
        received += len(mids)
    elapsed = time.perf_counter() - began
    c.disconnect()
    c.loop_stop()
    return received / elapsed


async def gmqtt_rate(broker: MosquittoService, messages: int) -> float:
    import gmqtt

    async def connect(handler: object) -> gmqtt.Client:
        c = gmqtt.Client(
            "gmqtt-v5",
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=600,
            receive_maximum=10_000,
        )
        c.on_message = handler
        await c.connect(broker.host, broker.port, version=gmqtt.constants.MQTTv50)
        return c

    async def ignore(*args: object) -> int:
        return 0

    c = await connect(ignore)
    for topic in TOPICS:
        c.subscribe(topic, qos=1)
    await asyncio.sleep(0.5)
    await c.disconnect()
    expected = await asyncio.to_thread(preload, broker, messages)
    state = {"received": 0, "began": 0.0}
    committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def on_message(
        client: object, topic: str, payload: bytes, qos: int, props: object
    ) -> int:
        nonlocal committed
        if not state["began"]:
            state["began"] = time.perf_counter()
        state["received"] += 1
        if state["received"] >= expected:
            done.set()
        await committed
        return 0

    async def commit_loop() -> None:
        nonlocal committed
        while not done.is_set():
            await asyncio.sleep(0.02)
            committed.set_result(None)
            committed = asyncio.get_running_loop().create_future()
        committed.set_result(None)

    committer = asyncio.create_task(commit_loop())
    c = await connect(on_message)
    await done.wait()
    elapsed = time.perf_counter() - state["began"]
    await committer
    await c.disconnect()
    return state["received"] / elapsed


async def subscriber_rate(
    broker: MosquittoService, protocol: Literal["3.1.1", "5"], queue_backlog: Callable[[], int]
) -> tuple[float, float]:
    """Messages/s and CPU µs per message of the gateway's subscriber with a handler that
    does nothing, draining the backlog `queue_backlog` queues (returning how many), and
    acknowledging each batch as the pipeline does after its commit."""
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        client_id=f"gateway-{protocol}",
        topics=TOPICS,
        alarm_topics=(),
        protocol=protocol,
    )
    subscriber = subscriber_for(config, SystemClock())
    await subscriber.start()
    while not subscriber.connected.is_set():
        await asyncio.sleep(0.05)
    subscriber.stop()
    expected = await asyncio.to_thread(queue_backlog)
    subscriber = subscriber_for(config, SystemClock())
    await subscriber.start()
    received = 0
    began = cpu_began = 0.0
    while received < expected:
        batch = await subscriber.next_batch(BATCH, LINGER_S if received else 0.0)
        if batch and not began:
            began, cpu_began = time.perf_counter(), time.process_time()
        subscriber.ack(batch)
        received += len(batch)
    elapsed = time.perf_counter() - began
    cpu_us = (time.process_time() - cpu_began) / received * 1e6
    subscriber.stop()
    return received / elapsed, cpu_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoService(Path(tmp) / "mosquitto")
        broker.start()
        try:
            share, yardstick_us = yardstick(broker)
            print(
                f"yardstick: paho 2 callbacks took {share:.0%} of {YARDSTICK_RATE_MSG_S:,} QoS 0"
                f" msg/s at {yardstick_us:.1f} µs a message (a core: {1e6 / yardstick_us:,.0f}"
                " msg/s)"
            )
            print(
                f"paho 2 callbacks, QoS 0, as fast as they take them: {paho_qos0_most(broker):,.0f}"
                " msg/s (the target's reference machine: about 40,000)"
            )
            results = {
                "paho 2 MQTT 3.1.1, manual ack": paho_rate(broker, args.messages, v5=False),
                "paho 2 MQTT 5, manual ack": paho_rate(broker, args.messages, v5=True),
                "gmqtt MQTT 5, ack after handler": asyncio.run(gmqtt_rate(broker, args.messages)),
            }
            cpu_us = {}
            subscribers: tuple[tuple[Literal["3.1.1", "5"], str], ...] = (
                ("5", "mqtt5 codec, MQTT 5"),
                ("3.1.1", "paho 2, MQTT 3.1.1"),
            )
            for protocol, name in subscribers:
                backlog = partial(preload, broker, args.messages)
                rate, cpu_us[name] = asyncio.run(subscriber_rate(broker, protocol, backlog))
                results[f"gateway subscriber ({name})"] = rate
        finally:
            broker.stop()
    for name, rate in results.items():
        print(f"{name:42} {rate:10,.0f} msg/s")
    for name, us in cpu_us.items():
        print(f"{'CPU per message, ' + name:42} {us:10,.1f} µs")


if __name__ == "__main__":
    main()
