import logging
import stat
from pathlib import Path

import pytest

from gateway.notify.link import MIN_SECRET_CHARS, LinkError, LinkSigner, link_secret

T0 = 1_767_225_600_000


def test_a_link_names_its_alert_and_receiver_until_it_expires() -> None:
    signer = LinkSigner("s3cret", "https://gw.example.cn/", ttl_s=3600)
    url = signer.url("a-1", "wang-fang", T0)
    assert url.startswith("https://gw.example.cn/a/")
    link = signer.verify(url.rsplit("/", 1)[1], T0 + 3_599_000)
    assert (link.alert_id, link.receiver, link.expires_ms) == ("a-1", "wang-fang", T0 + 3_600_000)
    with pytest.raises(LinkError, match="expired"):
        signer.verify(url.rsplit("/", 1)[1], T0 + 3_600_000)


def test_a_forged_or_damaged_link_is_refused() -> None:
    token = LinkSigner("s3cret", "http://x", 60).token("a-1", "r", T0)
    with pytest.raises(LinkError, match="not valid"):
        LinkSigner("another", "http://x", 60).verify(token, T0)
    with pytest.raises(LinkError, match="not valid"):
        LinkSigner("s3cret", "http://x", 60).verify(token[:-2] + "xx", T0)


def test_the_made_secret_is_kept_private_and_survives_a_restart(tmp_path: Path) -> None:
    first = link_secret(None, tmp_path / "var")
    assert len(first) >= MIN_SECRET_CHARS
    assert link_secret(None, tmp_path / "var") == first
    # Written whole, with no temporary file left beside it.
    assert [p.name for p in (tmp_path / "var").iterdir()] == ["link-secret"]
    mode = (tmp_path / "var" / "link-secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert link_secret("configured", tmp_path / "var") == "configured"


@pytest.mark.parametrize(
    "kept",
    [b"", b"\n", b"short-secret\n", b"\x00" * 44, b"\xff" * 44],
    ids=["empty", "blank", "short", "zeroes", "not-ascii"],
)
def test_a_kept_secret_left_empty_or_garbled_by_a_crash_is_replaced(
    tmp_path: Path, kept: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A power cut or a full disk while the first start wrote it: signing with what is
    # left would let anyone forge links.
    path = tmp_path / "link-secret"
    path.write_bytes(kept)
    with caplog.at_level(logging.WARNING, "gateway.notify.link"):
        secret = link_secret(None, tmp_path)
    assert len(secret) >= MIN_SECRET_CHARS and secret.isprintable()
    assert "holds no usable link secret" in caplog.text and secret not in caplog.text
    assert path.read_text(encoding="ascii") == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert link_secret(None, tmp_path) == secret
