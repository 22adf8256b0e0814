"""push-dashboards against a local HTTP server that answers as Grafana's API does.

Grafana itself is not installable here; the server checks the requests the gateway
sends (path, authorisation, body) and answers with Grafana's status codes and bodies.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.cli import main
from gateway.dashboards.catalogue import dashboards

TOKEN = "glsa_s3cret-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeGrafana(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    accepted: set[str]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.headers.get("Authorization") not in self.accepted:
            self._answer(401, {"message": "invalid API key"})
            return
        if self.path != "/api/dashboards/db":
            self._answer(404, {"message": "Not found"})
            return
        uid = body["dashboard"]["uid"]
        self._answer(
            200,
            {"id": 1, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": 1},
        )

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def answering(status: int, headers: dict[str, str], body: bytes) -> Iterator[str]:
    """A server that answers every POST alike, as a reverse proxy in front of Grafana
    may: a redirect to https or to its sign-in page."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def grafana() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    basic = "Basic " + base64.b64encode(b"admin:pw").decode()
    handler = type(
        "Handler",
        (FakeGrafana,),
        {"requests": requests, "accepted": {f"Bearer {TOKEN}", basic}},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_each_dashboard_is_posted_with_overwrite_and_the_token(
    grafana: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, requests = grafana
    assert main(["push-dashboards", "--url", url, "--token", TOKEN]) == 0
    expected = dashboards()
    assert len(requests) == len(expected)
    for request, board in zip(requests, expected.values(), strict=True):
        assert request["path"] == "/api/dashboards/db"
        assert request["auth"] == f"Bearer {TOKEN}"
        assert request["body"]["overwrite"] is True
        assert request["body"]["dashboard"] == board
    out = capsys.readouterr().out
    assert "community-overview.json: /d/community-overview/x" in out
    assert TOKEN not in out


def test_user_and_password_from_the_environment_and_a_folder(
    grafana: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = grafana
    monkeypatch.setenv("GRAFANA_URL", url)
    monkeypatch.setenv("GRAFANA_USER", "admin")
    monkeypatch.setenv("GRAFANA_PASSWORD", "pw")
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["push-dashboards", "--folder-uid", "community"]) == 0
    assert requests[0]["auth"] == "Basic " + base64.b64encode(b"admin:pw").decode()
    assert {r["body"]["folderUid"] for r in requests} == {"community"}


def test_a_wrong_token_is_a_clear_error_that_does_not_show_it(
    grafana: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, requests = grafana
    assert main(["push-dashboards", "--url", url, "--token", "wrong-token"]) == 1
    err = capsys.readouterr().err
    assert "refused the credentials (HTTP 401)" in err
    assert "wrong-token" not in err
    assert len(requests) == 1


def test_an_unreachable_grafana_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["push-dashboards", "--url", url, "--token", TOKEN, "--timeout-s", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Grafana at {url}" in err
    assert TOKEN not in err


def test_no_address_or_no_credential_is_refused_before_any_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GRAFANA_URL", "GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert main(["push-dashboards", "--token", TOKEN]) == 2
    assert "--url" in capsys.readouterr().err
    assert main(["push-dashboards", "--url", "http://127.0.0.1:9"]) == 1
    assert "token" in capsys.readouterr().err


@pytest.mark.parametrize(
    "status, location, says",
    [
        (
            301,
            "https://grafana.example/api/dashboards/db",
            "give that address, https://grafana.example",
        ),
        (302, "/oauth2/sign_in?rd=%2Fapi%2Fdashboards%2Fdb", "/oauth2/sign_in"),
    ],
)
def test_a_redirect_is_an_error_that_says_where_it_points(
    status: int, location: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is saved where a proxy redirects (to https, or to its sign-in page): that
    is no success, and where it points is named so that the right address is given."""
    with answering(status, {"Location": location}, b"") as url:
        assert main(["push-dashboards", "--url", url, "--token", TOKEN]) == 1
    out, err = capsys.readouterr()
    assert f"HTTP {status}" in err and says in err
    assert out == ""


def test_an_answer_that_is_not_grafanas_api_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An address that reaches some other web server (a sign-in page answering 200)."""
    page = b"<html><body>Sign in</body></html>"
    with answering(200, {"Content-Type": "text/html"}, page) as url:
        assert main(["push-dashboards", "--url", url, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert "not Grafana's API" in err and "Sign in" in err


def test_push_dashboards_names_a_mistyped_address_rather_than_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A port mistyped in the address is said as an error naming it, not a traceback.
    for url in ("http://grafana.example:30o0", "http://grafana.example:3000:3000"):
        try:
            code = main(["push-dashboards", "--url", url, "--token", "glsa_token"])
        except Exception as exc:
            pytest.fail(f"{url}: raised {type(exc).__name__}: {exc}")
        assert code in (1, 2)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and url in err
