"""A device's readings history: from InfluxDB, or from the outbox when there is none."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx

from gateway.api.models import ReadingOut, ReadingsOut
from gateway.decode.record import DeviceRef, FieldValue
from gateway.errors import StoreError
from gateway.store.line_protocol import encode_series, parse_line

if TYPE_CHECKING:
    from gateway.app import Gateway

# Tags of the telemetry series, not readings.
_TAGS = frozenset({"community", "device_id", "area", "compound", "building", "unit", "port"})


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ReadingHistory:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def measurements(self, device_type: str) -> tuple[str, ...]:
        """The device type's telemetry series: its own, and its parts' (a shed's ports)."""
        profile = self._gateway.profiles.by_device_type.get(device_type)
        if profile is None:
            return ()
        telemetry = profile.telemetry
        if telemetry.parts is not None:
            return (telemetry.measurement, telemetry.parts.measurement)
        return (telemetry.measurement,)

    async def readings(
        self, device: DeviceRef, since_ms: int | None, until_ms: int | None, limit: int
    ) -> ReadingsOut:
        measurements = self.measurements(device.device_type)
        if not measurements:
            return ReadingsOut(source="outbox", readings=[])
        if self._gateway.config.influx is not None:
            found = await self._from_influx(device, measurements, since_ms, until_ms, limit)
            return ReadingsOut(source="influxdb", readings=found)
        found = await asyncio.to_thread(
            self._from_outbox, device, measurements, since_ms, until_ms, limit
        )
        return ReadingsOut(source="outbox", readings=found)

    def influxql(
        self,
        device: DeviceRef,
        measurements: tuple[str, ...],
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
    ) -> str:
        where = [
            f'"community" = {_quote_string(device.community)}',
            f'"device_id" = {_quote_string(device.device_id)}',
        ]
        if since_ms is not None:
            where.append(f"time >= {since_ms}ms")
        if until_ms is not None:
            where.append(f"time <= {until_ms}ms")
        sources = ", ".join(_quote_identifier(m) for m in measurements)
        return (
            f"SELECT * FROM {sources} WHERE {' AND '.join(where)} ORDER BY time DESC LIMIT {limit}"
        )

    async def _from_influx(
        self,
        device: DeviceRef,
        measurements: tuple[str, ...],
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
    ) -> list[ReadingOut]:
        influx = self._gateway.config.influx
        if influx is None:
            return []
        query = self.influxql(device, measurements, since_ms, until_ms, limit)
        params = {"q": query, "epoch": "ms"}
        headers: dict[str, str] = {}
        if influx.api == "v1":
            params["db"] = influx.database
            if influx.retention_policy:
                params["rp"] = influx.retention_policy
            if influx.username:
                params["u"] = influx.username
            if influx.password:
                params["p"] = influx.password.get_secret_value()
        else:
            # InfluxDB 2.x answers InfluxQL for a bucket mapped to a database of its name.
            params["db"] = influx.bucket or ""
            if influx.token:
                headers["Authorization"] = f"Token {influx.token.get_secret_value()}"
        try:
            async with httpx.AsyncClient(timeout=influx.timeout_s) as client:
                response = await client.get(
                    influx.url.rstrip("/") + "/query", params=params, headers=headers
                )
        except httpx.HTTPError as exc:
            raise StoreError(f"InfluxDB query failed: {exc}", retryable=True) from exc
        if response.status_code in (401, 403):
            where = influx.database if influx.api == "v1" else influx.bucket
            raise StoreError(
                f"InfluxDB refused the query ({response.status_code}): readings history needs "
                f"READ on {where} for the gateway's user, as well as WRITE "
                f"({response.text[:200]})",
                retryable=False,
            )
        if response.status_code != 200:
            raise StoreError(
                f"InfluxDB answered {response.status_code}: {response.text[:200]}",
                retryable=response.status_code >= 500,
            )
        found = _influx_rows(response.json())
        found.sort(key=_newest_first)
        return found[:limit]

    def _from_outbox(
        self,
        device: DeviceRef,
        measurements: tuple[str, ...],
        since_ms: int | None,
        until_ms: int | None,
        limit: int,
    ) -> list[ReadingOut]:
        # The device's tags as they are written, escaped like any tag value. Tags are
        # written sorted, each after a comma; the community's is followed by another
        # (the device id's, or a compound's, sorts after it). The id's may end the series
        # or be followed by a port's, and an id may begin another (sd-1, sd-10): which
        # line is the device's own is told by its tags, read back.
        community_tag = encode_series("m", [("community", device.community)])[1:]
        id_tag = encode_series("m", [("device_id", device.device_id)])[1:]
        readings: dict[str, ReadingOut] = {}

        def own(line: str) -> bool:
            reading = _own_reading(line, device, measurements, since_ms, until_ms)
            if reading is not None:
                readings[line] = reading
            return reading is not None

        lines = self._gateway.outbox.lines_containing(
            (community_tag + ",", id_tag), limit, keep=own
        )
        found = [readings[line] for line in lines]
        found.sort(key=_newest_first)
        return found


def _own_reading(
    line: str,
    device: DeviceRef,
    measurements: tuple[str, ...],
    since_ms: int | None,
    until_ms: int | None,
) -> ReadingOut | None:
    """The line as a reading, if it is one of the device's telemetry series in the time
    asked for."""
    try:
        measurement, tags, fields, time_ms = parse_line(line)
    except ValueError:
        return None
    if (
        measurement not in measurements
        or tags.get("community") != device.community
        or tags.get("device_id") != device.device_id
        or (since_ms is not None and time_ms < since_ms)
        or (until_ms is not None and time_ms > until_ms)
    ):
        return None
    port = tags.get("port")
    return ReadingOut(
        time_ms=time_ms,
        measurement=measurement,
        port=int(port) if port is not None and port.isdigit() else None,
        fields=fields,
    )


def _newest_first(reading: ReadingOut) -> tuple[int, str, int]:
    # Points of one message share a time: the same order from either source.
    return (-reading.time_ms, reading.measurement, reading.port or 0)


def _influx_rows(body: Any) -> list[ReadingOut]:
    found: list[ReadingOut] = []
    for result in body.get("results", []) if isinstance(body, dict) else []:
        if "error" in result:
            raise StoreError(f"InfluxDB query error: {result['error']}", retryable=False)
        for series in result.get("series", []):
            columns: list[str] = series.get("columns", [])
            for values in series.get("values", []):
                row = dict(zip(columns, values, strict=False))
                port = row.get("port")
                fields: dict[str, FieldValue] = {
                    k: v
                    for k, v in row.items()
                    if k != "time" and k not in _TAGS and isinstance(v, bool | int | float | str)
                }
                found.append(
                    ReadingOut(
                        time_ms=int(row["time"]),
                        measurement=str(series.get("name", "")),
                        port=int(port) if isinstance(port, str) and port.isdigit() else None,
                        fields=fields,
                    )
                )
    return found
