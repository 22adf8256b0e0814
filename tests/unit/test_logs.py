import logging

import pytest

from gateway.decode.record import Position
from gateway.logs import MaskingFormatter, coarse_positions, configure_logging, mask_phones
from gateway.notify.notice import map_url


def test_mobile_numbers_are_masked_and_other_numbers_kept() -> None:
    line = (
        "could not notify contact:13987654321 of alert fall:hgy:br-1:1767225600000 "
        "(IMEI 860425041234563, seq 12345678901, +8613812345678)"
    )
    assert mask_phones(line) == (
        "could not notify contact:139****4321 of alert fall:hgy:br-1:1767225600000 "
        "(IMEI 860425041234563, seq 12345678901, +86138****5678)"
    )


def test_positions_are_made_about_a_kilometre_wide_and_other_numbers_kept() -> None:
    raw = '{"ts": 1, "lat": 34.75612, "lon":113.62387, "heart_rate_bpm": 300, "x": "flat 7.125"}'
    assert coarse_positions(raw) == (
        '{"ts": 1, "lat": 34.76, "lon":113.62, "heart_rate_bpm": 300, "x": "flat 7.125"}'
    )
    # As a line or the reason a message was refused writes it.
    assert coarse_positions("bracelet,device_id=br-1 lat=34.75612,lon=113.62387 1") == (
        "bracelet,device_id=br-1 lat=34.76,lon=113.62 1"
    )
    assert coarse_positions("lat must be a number, got '34.75612'") == (
        "lat must be a number, got '34.76'"
    )
    assert coarse_positions('{"lat": 3.475612e1, "lon": -1.23456}') == (
        '{"lat": 34.76, "lon": -1.23}'
    )
    # Where a map link leads.
    link = map_url(Position(34.75612, 113.62387), "跌倒")
    assert link is not None and "position=113.62387,34.75612" in link
    assert "position=113.62,34.76&" in coarse_positions(link)
    # A position in millionths of a degree, as some trackers send it: where, in another
    # unit, masked.
    assert coarse_positions('{"lat": 34756121, "lon": -113623874}') == (
        '{"lat": 34******, "lon": -1********}'
    )
    # Coarse already, or no position at all: as written.
    kept = '{"lat": 35, "lon": 113.6, "note": "lat unknown, 3.14159 km", "lat": "", "c": 0.873}'
    assert coarse_positions(kept) == kept


def test_the_gateways_log_writes_no_phone_number_nor_position(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers.clear()
    try:
        configure_logging(logging.INFO, "%(levelname)s %(message)s")
        assert all(isinstance(h.formatter, MaskingFormatter) for h in root.handlers)
        logging.getLogger("gateway.notify").warning(
            "notify %s: %s", "contact:13987654321", "【紧急告警】跌倒"
        )
        logging.getLogger("gateway.pipeline").info(
            "quarantined %s: %s", "community/hgy/bracelet/br-1/telemetry", b'{"lat": 34.75612}'
        )
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = kept
    assert capsys.readouterr().err == (
        "WARNING notify contact:139****4321: 【紧急告警】跌倒\n"
        "INFO quarantined community/hgy/bracelet/br-1/telemetry: b'{\"lat\": 34.76}'\n"
    )
