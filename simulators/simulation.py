"""The engine: devices, scenarios and a clock of simulated milliseconds, giving messages."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from simulators.acme import AcmeFrame, FrameType, StatusBits
from simulators.device import Device
from simulators.malformed import malformed_messages
from simulators.message import (
    MessageKind,
    SimMessage,
    device_topic,
    encode_json,
    vendor_topic,
)
from simulators.models import DeviceModel, make_model
from simulators.models.model import Fields
from simulators.scenario import Scenario, ScenarioKind, resolve

QOS = 1
# Reporting periods wobble a little, as real device clocks do.
PERIOD_JITTER = 0.01
ACME_LOW_BATTERY_PCT = 20


@dataclass(slots=True)
class _Run:
    """A simulated device while the simulation runs (mutable, private to the engine)."""

    device: Device
    model: DeviceModel
    seq: int = 0
    last_ms: int = -1
    silent: bool = False
    tick_token: int = 0
    next_tick_ms: int = 0


# tick: a periodic report · hit: a scenario stage reaches a device · emit: send an event ·
# silence: the device stops and its last will is published · malformed: send bad input
ActionKind = Literal["tick", "hit", "emit", "silence", "malformed"]


@dataclass(order=True, slots=True)
class _Action:
    """Something due at `time_ms`; `order` keeps same-time actions first-in, first-out."""

    time_ms: int
    order: int
    what: ActionKind = field(compare=False)
    index: int = field(compare=False, default=-1)
    stage: str = field(compare=False, default="")
    token: int = field(compare=False, default=0)
    fields: Fields | None = field(compare=False, default=None)


def last_will(device: Device, time_ms: int = 0) -> SimMessage:
    return SimMessage(
        topic=device_topic(device.community, device.device_type, device.device_id, "status"),
        payload=encode_json({"online": False}),
        qos=QOS,
        retain=True,
        time_ms=time_ms,
        device_id=device.device_id,
        kind=MessageKind.STATUS,
    )


def online_status(device: Device, time_ms: int) -> SimMessage:
    return SimMessage(
        topic=device_topic(device.community, device.device_type, device.device_id, "status"),
        payload=encode_json({"online": True, "ts": time_ms}),
        qos=QOS,
        retain=True,
        time_ms=time_ms,
        device_id=device.device_id,
        kind=MessageKind.STATUS,
    )


class Simulation:
    """One pass over simulated time for the devices this process owns.

    `devices` is the whole fleet, so that scenarios pick the same targets in every
    worker process; only the devices at `owned` indexes send anything.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        seed: int,
        start_ms: int,
        owned: Sequence[int],
        scenarios: Sequence[Scenario],
        period_scale: float,
        sends_fleet_wide: bool,
    ) -> None:
        if period_scale <= 0:
            raise ValueError("period_scale must be > 0")
        self.devices = list(devices)
        self.seed = seed
        self.start_ms = start_ms
        self.period_scale = period_scale
        self.runs: dict[int, _Run] = {
            i: _Run(devices[i], make_model(devices[i], seed=seed, start_ms=start_ms)) for i in owned
        }
        self.index_of = {d.device_id: i for i, d in enumerate(devices)}
        self.actions: list[_Action] = []
        self.counter = itertools.count()
        # Scheduled mode: each device has a chain of periodic ticks; streamed mode has none.
        self.ticking = False
        for scenario, hits in resolve(scenarios, self.devices, seed):
            for hit in hits:
                time_ms = start_ms + round(hit.at_s * 1000)
                if hit.device_id is None:
                    if sends_fleet_wide:
                        self._push(_Action(time_ms, 0, "malformed"))
                    continue
                index = self.index_of[hit.device_id]
                if index not in self.runs:
                    continue
                what: ActionKind = "silence" if scenario.kind is ScenarioKind.SILENT else "hit"
                self._push(_Action(time_ms, 0, what, index=index, stage=hit.stage))

    # --- the two ways of driving time ---

    def scheduled(self, duration_s: float) -> Iterator[SimMessage]:
        """Every device at its own (scaled) period, plus scenarios, in time order."""
        self.ticking = True
        for index, run in self.runs.items():
            phase = run.model.rng.random()
            self._schedule_tick(index, self.start_ms + round(phase * self._period_ms(run)))
        end_ms = self.start_ms + round(duration_s * 1000)
        while self.actions and self.actions[0].time_ms < end_ms:
            yield from self._perform(heapq.heappop(self.actions))

    def streamed(self, rate_msg_s: float) -> Iterator[SimMessage]:
        """Telemetry from device after device at a fixed total rate, plus scenarios; endless."""
        if rate_msg_s <= 0:
            raise ValueError("rate_msg_s must be > 0")
        order = sorted(self.runs)
        if not order:
            return
        interval_ms = 1000.0 / rate_msg_s
        slot = 0
        position = 0
        while True:
            slot_ms = self.start_ms + int(slot * interval_ms)
            while self.actions and self.actions[0].time_ms <= slot_ms:
                yield from self._perform(heapq.heappop(self.actions))
            slot += 1
            for _ in range(len(order)):
                run = self.runs[order[position]]
                position = (position + 1) % len(order)
                if not run.silent:
                    yield self._telemetry(run, slot_ms)
                    break
            else:
                if not self.actions:
                    return  # every device has gone silent

    # --- actions ---

    def _push(self, action: _Action) -> None:
        action.order = next(self.counter)
        heapq.heappush(self.actions, action)

    def _period_ms(self, run: _Run) -> float:
        return run.model.report_period_s() * 1000 * self.period_scale

    def _schedule_tick(self, index: int, time_ms: int) -> None:
        run = self.runs[index]
        run.tick_token += 1
        run.next_tick_ms = time_ms
        self._push(_Action(time_ms, 0, "tick", index=index, token=run.tick_token))

    def _perform(self, action: _Action) -> Iterator[SimMessage]:
        if action.what == "malformed":
            yield from malformed_messages(self.devices, action.time_ms)
            return
        run = self.runs[action.index]
        if run.silent:
            return
        if action.time_ms <= run.last_ms:
            # Keep each device's timestamps strictly increasing.
            action.time_ms = run.last_ms + 1
            self._push(action)
            return
        now_ms = action.time_ms
        match action.what:
            case "tick":
                if action.token != run.tick_token:
                    return  # superseded by an earlier report
                yield self._telemetry(run, now_ms)
                if self.ticking:
                    jitter = 1 + run.model.rng.uniform(-PERIOD_JITTER, PERIOD_JITTER)
                    period_ms = max(1, round(self._period_ms(run) * jitter))
                    self._schedule_tick(action.index, now_ms + period_ms)
            case "emit":
                yield self._event(run, now_ms, action.fields or {})
            case "silence":
                run.silent = True
                run.last_ms = now_ms
                yield last_will(run.device, now_ms)
            case _:  # hit
                self._hit(action, run, now_ms)

    def _hit(self, action: _Action, run: _Run, now_ms: int) -> None:
        reaction = run.model.trigger(action.stage, now_ms)
        # A vendor frame carries no event: the immediate report is the alarm report.
        vendor_report = run.device.imei is not None and reaction.report_now
        for event in () if vendor_report else reaction.events:
            self._push(_Action(now_ms, 0, "emit", index=action.index, fields=event))
        for delay_s, stage in reaction.followups:
            later_ms = now_ms + round(delay_s * 1000)
            self._push(_Action(later_ms, 0, "hit", index=action.index, stage=stage))
        if reaction.report_now:
            # Queued after the events, so an alarm event comes before the alarm reading.
            self._schedule_tick(action.index, now_ms)
        elif self.ticking:
            # A device that is now alarming reports sooner than its quiet period would.
            soonest_ms = now_ms + max(1, round(self._period_ms(run)))
            if soonest_ms < run.next_tick_ms:
                self._schedule_tick(action.index, soonest_ms)

    # --- messages ---

    def _stamp(self, run: _Run, now_ms: int) -> tuple[int, int]:
        """The message's `ts`, after its device's last by 1 ms at least, and its `seq`.
        The message itself is sent at `now_ms`: a stream faster than 1,000 msg/s a device
        keeps its rate, its `ts` running ahead of the schedule meanwhile."""
        run.seq += 1
        run.last_ms = max(now_ms, run.last_ms + 1)
        return run.last_ms, run.seq

    def _telemetry(self, run: _Run, now_ms: int) -> SimMessage:
        run.model.advance(now_ms)
        time_ms, seq = self._stamp(run, now_ms)
        reading = run.model.reading()
        if run.device.imei is not None:
            return self._acme(run, reading, time_ms, seq, now_ms)
        payload = encode_json({"ts": time_ms, "seq": seq, **reading})
        return self._message(run, "telemetry", payload, now_ms, MessageKind.TELEMETRY)

    def _event(self, run: _Run, now_ms: int, event: Fields) -> SimMessage:
        run.model.advance(now_ms)
        time_ms, seq = self._stamp(run, now_ms)
        if run.device.imei is not None:
            # The vendor frame has no events: an alarm is an alarm report of the state.
            return self._acme(run, run.model.reading(), time_ms, seq, now_ms)
        payload = encode_json({"ts": time_ms, "seq": seq, **event})
        return self._message(run, "event", payload, now_ms, MessageKind.EVENT)

    def _message(
        self, run: _Run, topic_kind: str, payload: bytes, sent_ms: int, kind: MessageKind
    ) -> SimMessage:
        device = run.device
        return SimMessage(
            topic=device_topic(device.community, device.device_type, device.device_id, topic_kind),
            payload=payload,
            qos=QOS,
            retain=False,
            time_ms=sent_ms,
            device_id=device.device_id,
            kind=kind,
        )

    def _acme(self, run: _Run, reading: Fields, time_ms: int, seq: int, sent_ms: int) -> SimMessage:
        imei = run.device.imei or ""
        alarm = bool(reading["alarm"])
        battery_pct = _as_int(reading["battery_pct"])
        status = StatusBits.ALARM if alarm else StatusBits.NONE
        if battery_pct < ACME_LOW_BATTERY_PCT:
            status |= StatusBits.LOW_BATTERY
        frame = AcmeFrame(
            frame_type=FrameType.ALARM if alarm else FrameType.PERIODIC,
            status=status,
            battery_pct=battery_pct,
            temperature_c=_as_float(reading["temperature_c"]),
            obscuration_pct_per_m=_as_float(reading["obscuration_pct_per_m"]),
        )
        # A carrier platform adds its own message counter; the contract lets extra keys pass.
        payload = encode_json(
            {"imei": imei, "ts": time_ms, "seq": seq, "payload": frame.encode().hex()}
        )
        return SimMessage(
            topic=vendor_topic(imei),
            payload=payload,
            qos=QOS,
            retain=False,
            time_ms=sent_ms,
            device_id=run.device.device_id,
            kind=MessageKind.VENDOR,
        )


def _as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
