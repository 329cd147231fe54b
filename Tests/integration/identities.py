"""Mints a throwaway CA and SPIFFE leaf certificates at test time (no key is committed)."""
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class MiniCA:
    def __init__(self, trust_domain="cluster.local"):
        self.trust_domain = trust_domain
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(self.now - datetime.timedelta(minutes=5))
                     .not_valid_after(self.now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.root_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, directory, service_account, namespace="default"):
        """Writes cert-chain.pem, key.pem and root-cert.pem; returns (spiffe id, private key)."""
        spiffe = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(minutes=5))
                .not_valid_after(self.now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
                .sign(self.key, hashes.SHA256()))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "cert-chain.pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(directory, "root-cert.pem"), "wb") as f:
            f.write(self.root_pem)
        with open(os.path.join(directory, "key.pem"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return spiffe, key

    def write_cacerts(self, directory):
        """Writes this CA in Istio's cacerts layout (the CA is its own root here)."""
        os.makedirs(directory, exist_ok=True)
        files = {
            "ca-cert.pem": self.root_pem,
            "root-cert.pem": self.root_pem,
            "cert-chain.pem": self.root_pem,
            "ca-key.pem": self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()),
        }
        for name, data in files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
