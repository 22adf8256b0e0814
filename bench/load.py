"""Simulator traffic for the benchmarks, offered at a set rate for little CPU.

The benchmarks run the load beside the gateway on one machine. A device's publish costs
the device, not the gateway's machine, yet a Python client library spends 30-100 µs of
the shared cores on each (gmqtt about 33, paho about 100 single-threaded and more with
its network thread, measured on the 2-core bench machine), which at 10k msg/s is a core
the gateway then lacks. So each load process makes its share of the simulator's messages
before the clock starts, encodes each once as an MQTT 3.1.1 QoS 1 PUBLISH, and then only
writes those bytes to the broker on time and counts the PUBACKs that come back: a few µs
per message. What the broker receives is the same as from any client.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from simulators.fleet import Fleet
from simulators.message import SimMessage

CONNECT_TIMEOUT_S = 10.0
# How long to wait at the end for the broker to acknowledge what is still in flight.
FINAL_ACK_TIMEOUT_S = 30.0
# Publishes awaiting their PUBACK, at most: below the 65,535 packet ids, so none is
# reused while in flight.
WINDOW = 60_000
# How often a paced process writes what has come due.
TICK_S = 0.002
# A PUBACK of MQTT 3.1.1: fixed header, remaining length 2, packet id. With keepalive
# off, nothing else comes from the broker after the CONNACK.
PUBACK_BYTES = 4
# The timestamps of an unpaced load advance at this rate per process.
UNPACED_NOMINAL_RATE_MSG_S = 5000.0
# Load offered while the gateway runs stands for devices elsewhere on the network, which
# take none of the gateway machine's cores: it runs at the lowest priority, below the
# gateway's telemetry process (+12) as well, and takes the cores only when the gateway
# would not.
DEVICES_NICENESS = 19


@dataclass(frozen=True, slots=True)
class LoadReport:
    published: int
    acknowledged: int
    # From the first process's first write to the last acknowledgement of any.
    elapsed_s: float
    # CPU time the processes spent publishing, on the cores the gateway runs on.
    cpu_s: float = 0.0

    @property
    def rate_msg_s(self) -> float:
        """Acknowledged messages per second."""
        return self.acknowledged / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Load:
    """Processes that publish a fleet's traffic to a broker at `rate_msg_s` in all (or as
    fast as the broker acknowledges, with None) for `seconds` or `messages`."""

    def __init__(
        self,
        port: int,
        *,
        seed: int,
        devices: int,
        rate_msg_s: float | None,
        seconds: float | None = None,
        messages: int | None = None,
        processes: int = 2,
        niceness: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        if (seconds is None) == (messages is None):
            raise ValueError("give seconds or messages")
        if rate_msg_s is None and messages is None:
            raise ValueError("an unpaced load needs a number of messages")
        per_process_rate = rate_msg_s / processes if rate_msg_s is not None else None
        shares = _shares(
            messages if messages is not None else round((rate_msg_s or 0) * (seconds or 0)),
            processes,
        )
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes = []
        client_prefix = f"load-{os.getpid()}-{time.monotonic_ns()}"
        for index, share in enumerate(shares):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(theirs, host, port, f"{client_prefix}-{index}"),
                kwargs={
                    "seed": seed,
                    "devices": devices,
                    "shard": (index, processes),
                    "count": share,
                    "rate_msg_s": per_process_rate,
                    "niceness": niceness,
                },
                daemon=True,
            )
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)

    def start(self) -> None:
        """Blocks until every process has made its messages and connected; then starts
        them all at once."""
        for pipe in self._pipes:
            ready = pipe.recv()
            if ready != "ready":
                raise ConnectionError(f"a load process could not start: {ready}")
        for pipe in self._pipes:
            pipe.send("go")

    def wait(self) -> LoadReport:
        """Blocks until every process has published and had its acknowledgements."""
        results: list[tuple[int, int, float, float, float]] = [pipe.recv() for pipe in self._pipes]
        for process in self._processes:
            process.join()
        return LoadReport(
            published=sum(r[0] for r in results),
            acknowledged=sum(r[1] for r in results),
            elapsed_s=max(r[3] for r in results) - min(r[2] for r in results),
            cpu_s=sum(r[4] for r in results),
        )

    def run(self) -> LoadReport:
        self.start()
        return self.wait()


def _shares(total: int, processes: int) -> list[int]:
    share, extra = divmod(total, processes)
    return [share + (1 if index < extra else 0) for index in range(processes)]


def _serve(
    pipe: Connection,
    host: str,
    port: int,
    client_id: str,
    *,
    seed: int,
    devices: int,
    shard: tuple[int, int],
    count: int,
    rate_msg_s: float | None,
    niceness: int,
) -> None:
    os.nice(niceness)
    fleet = Fleet.build(seed=seed, devices=devices).sharded(*shard)
    start_ms = time.time_ns() // 1_000_000
    stream = fleet.stream(rate_msg_s=rate_msg_s or UNPACED_NOMINAL_RATE_MSG_S, start_ms=start_ms)
    messages = itertools.chain(fleet.status_messages(start_ms), itertools.islice(stream, count))
    frames = encode_publishes(messages)
    try:
        sock = connect(host, port, client_id)
    except OSError as exc:
        pipe.send(str(exc))
        return
    pipe.send("ready")
    pipe.recv()
    began = time.monotonic()
    cpu_began_s = time.process_time()
    acknowledged = _publish(sock, frames, rate_msg_s)
    ended = time.monotonic()
    cpu_s = time.process_time() - cpu_began_s
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    pipe.send((len(frames), acknowledged, began, ended, cpu_s))


def encode_publishes(messages: Iterable[SimMessage]) -> list[bytes]:
    """Each message as a QoS 1 PUBLISH, packet ids 1 to 65,535 in turn."""
    frames = []
    for index, message in enumerate(messages):
        topic = message.topic.encode()
        body = b"".join(
            (len(topic).to_bytes(2, "big"), topic, (index % 65_535 + 1).to_bytes(2, "big"))
        )
        header = 0x32 | (0x01 if message.retain else 0x00)
        length = len(body) + len(message.payload)
        frames.append(bytes((header,)) + remaining_length(length) + body + message.payload)
    return frames


def remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def connect(host: str, port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    name = client_id.encode()
    # Protocol "MQTT" level 4, clean session, keepalive off.
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(name).to_bytes(2, "big") + name
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    connack = _read_exactly(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        sock.close()
        raise ConnectionRefusedError(f"the broker refused the load's connection: {connack!r}")
    return sock


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def _publish(sock: socket.socket, frames: Sequence[bytes], rate_msg_s: float | None) -> int:
    """Writes the frames on time; the number the broker acknowledged."""
    sock.setblocking(False)
    acked_bytes = 0
    sent = 0
    origin = time.monotonic()

    def read_acks(block_s: float) -> None:
        nonlocal acked_bytes
        sock.settimeout(block_s)
        try:
            while chunk := sock.recv(1 << 16):
                acked_bytes += len(chunk)
                sock.setblocking(False)
        except (BlockingIOError, TimeoutError):
            pass
        finally:
            sock.setblocking(False)

    while sent < len(frames):
        due = (
            len(frames)
            if rate_msg_s is None
            else min(len(frames), int((time.monotonic() - origin) * rate_msg_s) + 1)
        )
        due = min(due, acked_bytes // PUBACK_BYTES + WINDOW)
        if due > sent:
            sock.setblocking(True)
            sock.sendall(b"".join(frames[sent:due]))
            sock.setblocking(False)
            sent = due
        read_acks(0.0)
        if sent - acked_bytes // PUBACK_BYTES >= WINDOW:
            read_acks(CONNECT_TIMEOUT_S)
        elif rate_msg_s is not None and sent < len(frames):
            time.sleep(TICK_S)
    deadline = time.monotonic() + FINAL_ACK_TIMEOUT_S
    while acked_bytes // PUBACK_BYTES < sent and time.monotonic() < deadline:
        read_acks(0.1)
    return acked_bytes // PUBACK_BYTES
