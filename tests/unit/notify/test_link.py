import stat
from pathlib import Path

import pytest

from gateway.notify.link import LinkError, LinkSigner, link_secret

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
    assert link_secret(None, tmp_path / "var") == first
    mode = (tmp_path / "var" / "link-secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert link_secret("configured", tmp_path / "var") == "configured"
