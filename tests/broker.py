"""A real Mosquitto broker for tests: free loopback port, config in tmp, stop/restart on one port.

Why real: reconnects, last wills, retained messages, persistent sessions and TLS are broker
behaviour that a mock would only imitate. Use :func:`broker_session` from a fixture; it prints the
broker log at teardown, which pytest shows only when the test failed.

    @pytest.fixture
    def broker(tmp_path):
        yield from broker_session(tmp_path)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import queue
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def have_mosquitto() -> bool:
    return Path(MOSQUITTO).exists()


def require_mosquitto() -> None:
    """Skip (with the reason) where the mosquitto binary is not installed."""
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA, a server cert (SAN 127.0.0.1, localhost) and a client cert (EC P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("sonitor test CA"))
        .issuer_name(name("sonitor test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
                    if server
                    else [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    files = TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for (cert_path, key_path), server in (
        ((files.server_cert, files.server_key), True),
        ((files.client_cert, files.client_key), False),
    ):
        cert, key = leaf("127.0.0.1" if server else "sonitor-client", server)
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
    return files


class Broker:
    """One mosquitto process; ``stop()`` + ``start()`` reuse the same port and persistence file."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        passwords: dict[str, str] | None = None,
        persistence: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if passwords else 'true'}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to `mosquitto`, which cannot read tmp
        if passwords:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in passwords.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {pw}")
        if tls:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        """Start and wait until the port accepts TCP connections."""
        require_mosquitto()
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (saves persistent sessions) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def broker_session(workdir: Path, **kwargs: object) -> Iterator[Broker]:
    """Fixture body: a started broker, stopped at teardown with its log printed."""
    require_mosquitto()
    broker = Broker(workdir / "broker", **kwargs)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        print(f"---- mosquitto log ({broker.log_path}) ----\n{broker.log_text()}")


class Subscriber:
    """A plain paho client for assertions: collects messages of the given topic filters.

    ``persistent=True`` keeps a broker session (clean_session False, QoS 1) so that messages
    published while this subscriber is disconnected (e.g. across a broker restart) still arrive.
    """

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        client_id: str = "",
        persistent: bool = False,
        tls: TlsFiles | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.topics = topics
        self._subscribed = queue.Queue[int]()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{os.getpid()}-{time.monotonic_ns()}",
            clean_session=not persistent,
        )
        if tls:
            self.client.tls_set(str(tls.ca), str(tls.client_cert), str(tls.client_key))
        if auth:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.put(mid)
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self._subscribed.get(timeout=10)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def get(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def collect(
        self, until: Callable[[list[mqtt.MQTTMessage]], bool], timeout: float = 15.0
    ) -> list[mqtt.MQTTMessage]:
        """Messages received until ``until(all so far)`` is true; AssertionError on timeout."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                topics = [(m.topic, m.payload[:80]) for m in got]
                raise AssertionError(f"timed out after {timeout} s; got {topics}")
            with contextlib.suppress(queue.Empty):
                got.append(self.messages.get(timeout=min(left, 0.2)))
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
