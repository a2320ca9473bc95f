"""TLS and mutual TLS on a real server: settings.server.tls_cert / tls_key / tls_client_ca.

Certificates come from a throwaway CA made by trustme for each test module; nothing
is read from or written to the system trust store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from recsvc.client import RecommenderClient

from factories import small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.integration

# A refused handshake fails fast with UNAVAILABLE (retried three times with backoff,
# well under a second); the deadline only bounds a test that would otherwise hang.
FAIL_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-artifacts")
    publish_block_model(root)
    return root


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """PEM certificate chain and key of a server certificate for 127.0.0.1 and localhost."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    chain, key = folder / "server.pem", folder / "server.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


def start(
    shop_root: Path,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    tls: dict[str, str],
) -> ServerThread:
    settings = small_settings(
        None,
        artifact_root=str(shop_root),
        erasure_list=str(tmp_path / "erased.txt"),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={
            "port": 0,
            "metrics_port": None,
            "event_log_dir": str(tmp_path / "eventlog"),
            **tls,
        },
    )
    return ServerThread(settings)


@pytest.fixture()
def tls_server(
    shop_root: Path,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    server_files: tuple[Path, Path],
) -> Iterator[ServerThread]:
    chain, key = server_files
    running = start(
        shop_root, redis_url, redis_prefix, tmp_path, {"tls_cert": str(chain), "tls_key": str(key)}
    )
    yield running
    running.stop()


@pytest.fixture()
def client_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    """A CA for client certificates, separate from the one that signed the server's."""
    authority = trustme.CA()
    path = tmp_path / "client-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.fixture()
def mtls_server(
    shop_root: Path,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> Iterator[ServerThread]:
    chain, key = server_files
    tls = {"tls_cert": str(chain), "tls_key": str(key), "tls_client_ca": str(client_ca[1])}
    running = start(shop_root, redis_url, redis_prefix, tmp_path, tls)
    yield running
    running.stop()


def credentials(ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in client.cert_chain_pems),
    )


def refused(target: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of a GetModelInfo that must not get through."""
    with (
        RecommenderClient(target, timeout=FAIL_TIMEOUT, credentials=creds) as client,
        pytest.raises(grpc.RpcError) as err,
    ):
        client.model_info()
    code: grpc.StatusCode = err.value.code()
    return code


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_trusting_the_ca_gets_through(
    tls_server: ServerThread, ca: trustme.CA, host: str
) -> None:
    target = f"{host}:{tls_server.running.port}"
    with RecommenderClient(target, timeout=5.0, credentials=credentials(ca)) as client:
        assert client.model_info().item_count == 24
        resp = client.recommend("g0u01", k=3)
        assert len(resp.items) == 3 and all(i.item_id.startswith("g0") for i in resp.items)


def test_plaintext_client_is_refused(tls_server: ServerThread, ca: trustme.CA) -> None:
    assert refused(tls_server.target, None) == grpc.StatusCode.UNAVAILABLE
    with RecommenderClient(tls_server.target, timeout=5.0, credentials=credentials(ca)) as client:
        assert client.model_info().model_version  # the same server, over TLS


def test_client_not_trusting_the_ca_is_refused(tls_server: ServerThread) -> None:
    stranger = trustme.CA()  # the server's certificate does not chain to it
    assert refused(tls_server.target, credentials(stranger)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_client_ca(
    mtls_server: ServerThread, ca: trustme.CA, client_ca: tuple[trustme.CA, Path]
) -> None:
    target = mtls_server.target
    # no client certificate
    assert refused(target, credentials(ca)) == grpc.StatusCode.UNAVAILABLE
    # a certificate, but signed by a CA the server does not accept for clients
    outsider = trustme.CA().issue_cert("storefront@example.com")
    assert refused(target, credentials(ca, outsider)) == grpc.StatusCode.UNAVAILABLE
    # a certificate the client CA signed
    storefront = client_ca[0].issue_cert("storefront@example.com")
    with RecommenderClient(target, timeout=5.0, credentials=credentials(ca, storefront)) as client:
        assert client.model_info().item_count == 24
        assert client.recommend(k=2).items


def test_mtls_without_tls_is_refused(mtls_server: ServerThread) -> None:
    assert refused(mtls_server.target, None) == grpc.StatusCode.UNAVAILABLE


def test_cli_client_speaks_tls_with_ca(
    tls_server: ServerThread, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    target = f"localhost:{tls_server.running.port}"
    cmd = [sys.executable, "-m", "recsvc", "info", "--target", target, "--json"]
    ok = subprocess.run([*cmd, "--ca", str(ca_file)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["item_count"] == "24"  # int64 is a string in proto3 JSON
    plain = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
