"""Access control and connection security: admin bearer token, Redis passwords and TLS through the
URL alone, and a loopback bind by default.

Redis TLS: the bundled redis-server is built without TLS, so a small TLS-terminating proxy (Python's
ssl module, a self-signed certificate made with the openssl CLI) stands in front of a real Redis;
the server reaches it with nothing but a ``rediss://`` URL.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridserve.cli import _parser
from loadtests.harness.redis_server import EmbeddedRedis, free_port
from serving.settings import Settings
from tests.helpers import ADMIN, running

ADMIN_ROUTES = [("post", "/v1/admin/flush", {}), ("put", "/v1/admin/policy", {}), ("post", "/v1/admin/reload", {})]
PASSWORD = "s3cret-Pw_with:colon"


def test_every_admin_route_needs_the_token(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid")) as (_, client):
        for method, path, body in ADMIN_ROUTES:
            send = getattr(client, method)
            assert send(path, json=body).status_code == 401
            assert send(path, json=body, headers={"Authorization": "Basic dGVzdC10b2tlbg=="}).status_code == 401
            assert send(path, json=body, headers={"Authorization": "Bearer"}).status_code == 401
            for wrong in ("nope", "test-token-longer", "test-toke", "TEST-TOKEN"):
                answer = send(path, json=body, headers={"Authorization": f"Bearer {wrong}"})
                assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
            assert send(f"{path}?token=test-token", json=body).status_code == 401  # never from the query
            assert send(path, json=body, headers=ADMIN).status_code == 200
    with running(make_settings(mode="hybrid", admin_token=None)) as (_, client):
        for method, path, body in ADMIN_ROUTES:
            answer = getattr(client, method)(path, json=body, headers=ADMIN)
            assert answer.status_code == 403 and answer.json()["error"] == "admin_disabled"


def test_blank_token_disables_admin() -> None:
    assert Settings(admin_token="   ").admin_token is None


def test_token_never_shown(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(admin_token="very-secret-token")
    assert "very-secret-token" not in repr(settings) and "very-secret-token" not in str(settings.model_dump())


def test_redis_password_never_shown() -> None:
    settings = Settings(redis_url="redis://:very-secret-pw@127.0.0.1:6379/0")
    assert "very-secret-pw" not in repr(settings) and "very-secret-pw" not in str(settings)


def _hits_redis(settings: Settings) -> None:
    """A hybrid server on ``settings`` computes, admits to Redis, then answers from Redis."""
    # A generous timeout: a TLS handshake on a loaded 2-core machine can outlast the 0.25 s default,
    # and this test is about reaching Redis through the URL, not about timeouts.
    with running(settings.model_copy(update={"l1_size": 0, "redis_timeout_s": 3.0})) as (_, client):
        assert client.get("/v1/predict/2:3").json()["source"] == "model"
        assert client.get("/v1/predict/2:3").json()["source"] == "redis"
        # /readyz pings on redis-py's own connection, a second TLS handshake through the test's
        # thread proxy: once in a clean-clone CI run it read "unreachable" right after two
        # answers from Redis. A probe reports what it saw at that moment, so ask up to 3 times.
        for _ in range(3):
            ready = client.get("/readyz").json()
            if ready["redis"] == "ok":
                break
            time.sleep(0.5)
        assert ready["redis"] == "ok" and ready["degraded"] is False, ready


@pytest.fixture(scope="module")
def password_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password=PASSWORD) as server:
        yield server


def test_password_in_url(make_settings, password_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{password_redis.port}/0"
    _hits_redis(make_settings(mode="hybrid", redis_url=url))


@pytest.mark.parametrize("auth", ["", ":wrong@"])
def test_wrong_or_missing_password_fails_open_not_500(make_settings, password_redis: EmbeddedRedis, auth: str) -> None:  # type: ignore[no-untyped-def]
    url = f"redis://{auth}127.0.0.1:{password_redis.port}/0"
    with running(make_settings(mode="hybrid", redis_url=url)) as (_, client):
        for _ in range(4):
            assert client.get("/v1/predict/2:4").status_code == 200
        redis = client.get("/v1/cache/stats").json()["redis"]
        # No password: Redis answers NOAUTH (an error reply, not an outage); a wrong one: the
        # connection's AUTH fails, so no usable connection (an outage).
        assert redis["rejected" if not auth else "errors"] > 0
        assert client.get("/readyz").json()["degraded"] is True
    with running(make_settings(mode="static", redis_url=url)) as (_, client):
        answer = client.get("/v1/predict/2:4")
        assert answer.status_code == 503 and answer.json()["error"] in {"redis_error", "redis_unavailable"}


class TLSProxy:
    """Accepts TLS on a loopback port and relays the plain bytes to a Redis port."""

    def __init__(self, cert: Path, key: Path, target_port: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.target_port = target_port
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            tls = self.context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        threading.Thread(target=_pipe, args=(upstream, tls), daemon=True).start()
        _pipe(tls, upstream)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.close()
            except OSError:
                pass


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a certificate")
def test_rediss_url_with_tls_and_password(make_settings, password_redis: EmbeddedRedis, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    proxy = TLSProxy(cert, key, password_redis.port)
    try:
        url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}"
        _hits_redis(make_settings(mode="hybrid", redis_url=url))
        # The certificate is verified: a client that does not trust it gets no Redis, only fallbacks.
        untrusted = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}/0"
        with running(make_settings(mode="hybrid", redis_url=untrusted)) as (_, client):
            assert client.get("/v1/predict/2:5").status_code == 200
            assert client.get("/readyz").json()["redis"] == "unreachable"
    finally:
        proxy.close()


def test_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRIDSERVE_HOST", raising=False)
    assert Settings().host == "127.0.0.1"
    args = _parser().parse_args(["serve"])
    assert args.host is None  # no --host: Settings' loopback default stands
