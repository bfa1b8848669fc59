"""TLS and mutual TLS on the gRPC endpoint, configured by environment only."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from deeplens.client import DeepLensClient
from deeplens_stack import Stack

from tests.conftest import start_extra_server, stop_process, wait_until

pytestmark = pytest.mark.stack


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = Path(tmp_path_factory.mktemp("pki"))
    ca_key = _key()
    ca = _cert("DeepLens test CA", ca_key, None, ca_key)
    server_key, client_key = _key(), _key()
    files = {
        "ca": _pem(ca),
        "server_cert": _pem(_cert("deeplens server", server_key, ca, ca_key)),
        "server_key": _pem(server_key),
        "client_cert": _pem(_cert("deeplens client", client_key, ca, ca_key)),
        "client_key": _pem(client_key),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def _serving(client: DeepLensClient, tenantless_name: str) -> bool:
    try:
        client.get_tenant(tenantless_name)
    except grpc.RpcError as err:
        return err.code() == grpc.StatusCode.NOT_FOUND  # reached the server and was answered
    return True


def test_tls(stack: Stack, pki: dict[str, Path]) -> None:
    port = stack.config.ports["grpc"] + 11
    proc = start_extra_server(
        stack,
        port,
        {"DEEPLENS_TLS_CERT_FILE": str(pki["server_cert"]), "DEEPLENS_TLS_KEY_FILE": str(pki["server_key"])},
    )
    try:
        secure = DeepLensClient(
            f"localhost:{port}", api_key=stack.admin_key(), root_certificates=pki["ca"].read_bytes()
        )
        wait_until(lambda: _serving(secure, "tenants/none-such"), 60, "the TLS server")
        plain = DeepLensClient(f"127.0.0.1:{port}", api_key=stack.admin_key(), timeout=5)
        with pytest.raises(grpc.RpcError) as exc:
            plain.get_tenant("tenants/none-such")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        secure.close()
        plain.close()
    finally:
        output = stop_process(proc)
    assert "Traceback" not in output


def test_mutual_tls(stack: Stack, pki: dict[str, Path]) -> None:
    port = stack.config.ports["grpc"] + 12
    proc = start_extra_server(
        stack,
        port,
        {
            "DEEPLENS_TLS_CERT_FILE": str(pki["server_cert"]),
            "DEEPLENS_TLS_KEY_FILE": str(pki["server_key"]),
            "DEEPLENS_TLS_CLIENT_CA_FILE": str(pki["ca"]),
        },
    )
    try:
        with_cert = DeepLensClient(
            f"localhost:{port}",
            api_key=stack.admin_key(),
            root_certificates=pki["ca"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
            private_key=pki["client_key"].read_bytes(),
        )
        wait_until(lambda: _serving(with_cert, "tenants/none-such"), 60, "the mTLS server")
        without_cert = DeepLensClient(
            f"localhost:{port}", api_key=stack.admin_key(), root_certificates=pki["ca"].read_bytes(), timeout=5
        )
        with pytest.raises(grpc.RpcError) as exc:
            without_cert.get_tenant("tenants/none-such")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        with_cert.close()
        without_cert.close()
    finally:
        output = stop_process(proc)
    assert "Traceback" not in output
