"""SeaweedFS's own ports closed to everyone but the stack: mutual TLS on its gRPC ports, JWTs on its HTTP data paths.

Only the S3 gateway checks pbp's access key. Without more, every other port of ``weed mini`` answered anyone on the
machine: ``curl http://127.0.0.1:FILER/buckets/`` listed every bucket and read every object (datasets, checkpoints,
MLflow's artifacts and models), and the filer accepted writes, through which another local user could plant a
checkpoint that the next resume loads. So the stack gives SeaweedFS:

- ``security.toml`` in its working directory (the state dir, 0600) with a CA and one certificate for every
  component (master, volume, filer, S3, admin, client): its gRPC ports accept only peers that present a certificate
  of that CA (``tls/``, 0700, its files 0600; the CA's key is not kept). Without one a connection fails its TLS handshake.
- JWT signing keys (derived from ``secrets.json``, passed in the process environment as ``WEED_JWT_*``): the
  filer's HTTP reads and writes and the volume servers' reads and writes need a token that only the components
  mint, so a request without one is answered 401.

What this does not close: the master's HTTP port answers anyone on the machine, and SeaweedFS guards its admin
calls (``/col/delete``, ``/vol/grow`` ...) only by an IP allow-list, which every local user passes on 127.0.0.1.
Another local user can therefore still destroy a bucket's data, but no longer read or change it (README).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from pathlib import Path

from pbp.stack.state import atomic_write

SECURITY_FILE = "security.toml"
TLS_DIR = "tls"
COMPONENTS = ("master", "volume", "filer", "s3", "admin", "client", "worker")
"""Every ``[grpc.<component>]`` SeaweedFS reads; all share one certificate (it does not check host names)."""
JWT_KEYS = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
            "WEED_JWT_FILER_SIGNING_READ_KEY")  # fmt: skip
CERT_DAYS = 3650


def jwt_env(secret: str) -> dict[str, str]:
    """The four signing keys (volume writes and reads, filer writes and reads), each derived from ``secret``."""
    return {name: hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest() for name in JWT_KEYS}


def write_security(state_dir: Path) -> Path:
    """``security.toml`` and its certificates in ``state_dir`` (made once, kept while valid for another 30 days)."""
    tls = state_dir / TLS_DIR
    tls.mkdir(mode=0o700, exist_ok=True)
    if not _valid(tls / "node.crt", days=30) or not (tls / "node.key").exists() or not (tls / "ca.crt").exists():
        _make_certificates(tls)
    ca, cert, key = (json.dumps(str(tls / name)) for name in ("ca.crt", "node.crt", "node.key"))  # TOML strings
    sections = [f"[grpc]\nca = {ca}\n"]
    sections += [f"[grpc.{c}]\ncert = {cert}\nkey = {key}\n" for c in COMPONENTS]
    sections += [
        "[access]\nui = false\n",  # the volume servers' status page
        "[filer.expose_directory_metadata]\nenabled = false\n",  # no listings over the filer's HTTP
    ]
    path = state_dir / SECURITY_FILE
    atomic_write(
        path, "# Written by `pbp stack up` (pbp.stack.seaweedfs_security).\n" + "\n".join(sections), mode=0o600
    )
    return path


def _valid(cert: Path, days: int) -> bool:
    from cryptography import x509

    if not cert.exists():
        return False
    try:
        not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    except ValueError:
        return False
    return not_after - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=days)


def _make_certificates(tls: Path) -> None:
    """A CA (its key dropped once it signed) and the one certificate every component presents, for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbp local stack CA")])

    def signed(subject: x509.Name, key, *extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=CERT_DAYS)))  # fmt: skip
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(ca_key, hashes.SHA256())

    ca = signed(ca_name, ca_key, (x509.BasicConstraints(ca=True, path_length=0), True))
    node = signed(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbp local stack SeaweedFS")]), node_key,
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
         False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(tls / "node.key", key_pem.decode(), mode=0o600)
    atomic_write(tls / "node.crt", node.public_bytes(pem).decode(), mode=0o600)
    atomic_write(tls / "ca.crt", ca.public_bytes(pem).decode(), mode=0o600)
