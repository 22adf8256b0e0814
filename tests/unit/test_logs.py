import logging

import pytest

from gateway.logs import MaskingFormatter, configure_logging, mask_phones


def test_mobile_numbers_are_masked_and_other_numbers_kept() -> None:
    line = (
        "could not notify contact:13987654321 of alert fall:hgy:br-1:1767225600000 "
        "(IMEI 860425041234563, seq 12345678901, +8613812345678)"
    )
    assert mask_phones(line) == (
        "could not notify contact:139****4321 of alert fall:hgy:br-1:1767225600000 "
        "(IMEI 860425041234563, seq 12345678901, +86138****5678)"
    )


def test_the_gateways_log_writes_no_phone_number(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers.clear()
    try:
        configure_logging(logging.INFO, "%(levelname)s %(message)s")
        assert all(isinstance(h.formatter, MaskingFormatter) for h in root.handlers)
        logging.getLogger("gateway.notify").warning(
            "notify %s: %s", "contact:13987654321", "【紧急告警】跌倒"
        )
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = kept
    assert capsys.readouterr().err == "WARNING notify contact:139****4321: 【紧急告警】跌倒\n"
