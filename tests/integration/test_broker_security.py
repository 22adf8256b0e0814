"""Broker login and TLS with a client certificate, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.integration.harness import gateway_config, running, wait_until
from tests.integration.services import MosquittoService


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    folder.mkdir()
    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=test-ca", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        key, csr, crt = (folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(key), "-out", str(csr))  # fmt: skip
        ext_file = folder / f"{name}.ext"
        ext_file.write_text(extension + "\n" if extension else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "2", "-out", str(crt), "-extfile", str(ext_file))  # fmt: skip


class SecureMosquitto(MosquittoService):
    """Only TLS with a client certificate signed by the test CA, and a valid login."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.certs = workdir / "certs"
        make_certificates(self.certs)
        passwords = workdir / "passwd"
        passwords.write_text("")
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), "gateway", "s3cret-pw"], check=True
        )
        passwords.chmod(0o600)
        self.password_file = passwords
        super().__init__(workdir)

    def config_text(self) -> str:
        base = super().config_text().replace("allow_anonymous true", "allow_anonymous false")
        return base + "\n".join(
            [
                f"password_file {self.password_file}",
                f"cafile {self.certs / 'ca.crt'}",
                f"certfile {self.certs / 'server.crt'}",
                f"keyfile {self.certs / 'server.key'}",
                "require_certificate true",
                "",
            ]
        )


@pytest.fixture
def secure_mosquitto(tmp_path: Path) -> SecureMosquitto:
    broker = SecureMosquitto(tmp_path / "secure-mosquitto")
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


def tls_settings(broker: SecureMosquitto) -> dict[str, str]:
    return {
        "ca_file": str(broker.certs / "ca.crt"),
        "cert_file": str(broker.certs / "client.crt"),
        "key_file": str(broker.certs / "client.key"),
    }


def publish_tls(broker: SecureMosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="secure-device")
    client.username_pw_set("gateway", "s3cret-pw")
    client.tls_set(
        ca_certs=str(broker.certs / "ca.crt"),
        certfile=str(broker.certs / "client.crt"),
        keyfile=str(broker.certs / "client.key"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_login_and_client_certificate(
    tmp_path: Path, secure_mosquitto: SecureMosquitto, namespace: str, protocol: str
) -> None:
    base = gateway_config(tmp_path, secure_mosquitto, namespace)
    assert base.mqtt is not None
    config = base.model_copy(
        update={
            "mqtt": base.mqtt.model_validate(
                {
                    **base.mqtt.model_dump(),
                    "username": "gateway",
                    "password": "s3cret-pw",
                    "tls": tls_settings(secure_mosquitto),
                    "protocol": protocol,
                }
            )
        }
    )
    async with running(config) as gateway:
        topic = f"community/{namespace}/bracelet/br-1/telemetry"
        await asyncio.to_thread(publish_tls, secure_mosquitto, topic, b'{"heart_rate_bpm": 71}')
        await wait_until(lambda: gateway.stats.lines_stored == 1, what="reading over TLS")


async def test_a_wrong_password_is_refused_and_never_logged(
    tmp_path: Path,
    secure_mosquitto: SecureMosquitto,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = gateway_config(tmp_path, secure_mosquitto, namespace)
    assert base.mqtt is not None
    mqtt_config = base.mqtt.model_validate(
        {
            **base.mqtt.model_dump(),
            "username": "gateway",
            "password": "wrong-pw",
            "tls": tls_settings(secure_mosquitto),
        }
    )
    gateway = Gateway(base.model_copy(update={"mqtt": mqtt_config}))
    task = asyncio.create_task(gateway.run())
    await wait_until(lambda: "refused the connection" in caplog.text, what="refusal logged")
    assert gateway.subscriber is not None and not gateway.subscriber.connected.is_set()
    assert "wrong-pw" not in caplog.text
    gateway.stop()
    await asyncio.wait_for(task, timeout=15)


# -- the certificates in a config file, checked when it is read ---------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls") / "certs"
    make_certificates(folder)
    openssl("pkey", "-in", str(folder / "client.key"), "-aes256", "-passout", "pass:secret",
            "-out", str(folder / "locked.key"))  # fmt: skip
    return folder


def config_file(folder: Path, tls: str) -> Path:
    path = folder / "gateway.yaml"
    path.write_text(f"mqtt:\n  tls: {tls}\n", encoding="utf-8")
    return path


def test_certificates_are_found_beside_the_config_and_check_passes(
    tmp_path: Path, certificates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(certificates, tmp_path / "certs")
    path = config_file(
        tmp_path,
        "{ca_file: certs/ca.crt, cert_file: certs/client.crt, key_file: certs/client.key}",
    )
    config = load_config(path)
    assert config.mqtt is not None and config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == tmp_path / "certs" / "ca.crt"
    assert config.mqtt.tls.key_file == tmp_path / "certs" / "client.key"
    assert main(["check", "--config", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("tls", "field", "problem"),
    [
        ("{ca_file: certs/nothing.crt}", "mqtt.tls.ca_file", "nothing.crt: cannot read: No such"),
        ("{ca_file: certs/client.csr}", "mqtt.tls.ca_file", "not a PEM certificate authority"),
        ("{ca_file: certs/ca.crt, cert_file: certs/client.crt, key_file: certs/server.key}",
         "mqtt.tls.cert_file", "the key is not the certificate's"),
        ("{ca_file: certs/ca.crt, cert_file: certs/client.crt}",
         "mqtt.tls.cert_file", "no PEM certificate with its private key"),
        ("{ca_file: certs/ca.crt, key_file: certs/client.key}",
         "mqtt.tls.key_file", "needs its certificate"),
        ("{ca_file: certs/ca.crt, cert_file: certs/client.crt, key_file: certs/locked.key}",
         "mqtt.tls.key_file", "encrypted; the gateway needs it without a passphrase"),
    ],
)  # fmt: skip
def test_a_certificate_that_cannot_be_used_is_named_with_its_setting(
    tmp_path: Path,
    certificates: Path,
    capsys: pytest.CaptureFixture[str],
    tls: str,
    field: str,
    problem: str,
) -> None:
    shutil.copytree(certificates, tmp_path / "certs")
    path = config_file(tmp_path, tls)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.file, error.value.field) == (str(path), field)
    assert problem in error.value.problem
    # So says check, and so would the gateway's start, before any connection is tried.
    assert main(["check", "--config", str(path)]) == 2
    assert f"{path}: {field}: " in capsys.readouterr().err
