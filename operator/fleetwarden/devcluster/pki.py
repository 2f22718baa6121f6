"""Certificates, keys and kubeconfigs for the local control plane, made with the openssl CLI.

Keys are ECDSA P-256 (fast to generate; Kubernetes accepts them for serving, client
and service-account signing). Everything is written under ``<state>/pki``.
"""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from pathlib import Path

from fleetwarden.devcluster import failures

# Who each client certificate authenticates as: file stem -> (CN, O or None).
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("fleetwarden-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    # KWOK plays every kubelet: it writes node and pod status and node leases.
    "kwok": ("kwok-controller", "system:masters"),
}


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise failures.BinaryMissingError("the openssl command is not on PATH (apt-get install openssl)")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise failures.ComponentError(f"openssl {args[0]} failed: {result.stderr.strip()[-800:]}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
             cwd=path.parent)
    path.chmod(0o600)


def _sign(pki: Pki, stem: str, subject: str, extensions: str, days: int) -> None:
    directory = pki.directory
    _ec_key(directory / f"{stem}.key")
    _openssl("req", "-new", "-key", f"{stem}.key", "-subj", subject, "-out", f"{stem}.csr", cwd=directory)
    (directory / f"{stem}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", f"{stem}.ext",
             "-out", f"{stem}.crt", cwd=directory)
    (directory / f"{stem}.csr").unlink()
    (directory / f"{stem}.ext").unlink()


def serving_extensions(service_ip: str) -> str:
    """X.509 extensions of the API server's serving certificate (loopback and in-cluster names)."""
    names = ["IP:127.0.0.1", "DNS:localhost", f"IP:{service_ip}", "DNS:kubernetes",
             "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local"]
    return ("basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={','.join(names)}\n")


CLIENT_EXTENSIONS = ("basicConstraints=critical,CA:FALSE\n"
                     "keyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=clientAuth\n")


def client_subject(cn: str, org: str | None) -> str:
    return f"/O={org}/CN={cn}" if org else f"/CN={cn}"


def generate(directory: Path, *, service_ip: str, days: int = 365) -> Pki:
    """Write the CA, API server serving cert, client certs and service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki(directory)
    _ec_key(pki.ca_key)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=fleetwarden-dev-ca", "-days",
             str(days), "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
             "-out", "ca.crt", cwd=directory)
    _sign(pki, "apiserver", "/CN=kube-apiserver", serving_extensions(service_ip), days)
    for stem, (cn, org) in CLIENTS.items():
        _sign(pki, stem, client_subject(cn, org), CLIENT_EXTENSIONS, days)
    _ec_key(pki.sa_key)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def kubeconfig(server: str, pki: Pki, client: str, *, cluster_name: str = "fleetwarden-dev") -> str:
    """A kubeconfig (YAML; JSON-compatible quoting) with certificates embedded."""
    user = f"{cluster_name}-{client}"
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {cluster_name}\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {_b64(pki.ca_cert)}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    client-certificate-data: {_b64(pki.client_cert(client))}\n"
        f"    client-key-data: {_b64(pki.client_key(client))}\n"
        "contexts:\n"
        f"- name: {cluster_name}\n"
        "  context:\n"
        f"    cluster: {cluster_name}\n"
        f"    user: {user}\n"
        "    namespace: default\n"
        f"current-context: {cluster_name}\n"
    )


def token_kubeconfig(admin_kubeconfig: str, token: str, user: str, namespace: str) -> str:
    """A kubeconfig for a ServiceAccount token (from the TokenRequest API) on the cluster of
    ``admin_kubeconfig``'s current context (its server and CA, nothing of its credentials)."""
    import yaml

    admin = yaml.safe_load(admin_kubeconfig)
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    return str(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": entry["name"], "cluster": dict(entry["cluster"])}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": entry["name"], "user": user, "namespace": namespace}}],
    }))
