"""Mints a throwaway CA and SPIFFE leaf certificates at test time (no key is committed)."""
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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

    def issue(self, directory, service_account, namespace="default", trust_domain=None, expired=False):
        """Writes cert-chain.pem, key.pem and root-cert.pem; returns (spiffe id, private key).
        `trust_domain` overrides the SPIFFE id's (same CA); `expired` makes a leaf whose validity
        ended an hour ago."""
        spiffe = f"spiffe://{trust_domain or self.trust_domain}/ns/{namespace}/sa/{service_account}"
        key = ec.generate_private_key(ec.SECP256R1())
        end = self.now - datetime.timedelta(hours=1) if expired else self.now + datetime.timedelta(days=1)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(hours=2))
                .not_valid_after(end)
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

    def revocation_list(self, serials):
        """A CRL of this CA (PEM bytes) revoking the certificates with these serial numbers."""
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.name)
                   .last_update(self.now - datetime.timedelta(minutes=5)).next_update(self.now + datetime.timedelta(days=1)))
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(self.now).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def serial(directory):
        """The serial number of the leaf in `directory`/cert-chain.pem."""
        with open(os.path.join(directory, "cert-chain.pem"), "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number

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

    def sign_csr(self, csr_pem, ttl_seconds):
        """Issues a workload leaf for a PEM CSR; returns the leaf as PEM bytes.

        The SAN is taken from the CSR as is; it is made critical whenever the subject is empty,
        because RFC 5280 requires that and a strict client would reject the leaf otherwise. The
        lifetime starts now (whole seconds, as X.509 stores them), not at this CA's creation, so a
        test can check that the requested TTL is exactly the lifetime it got."""
        if isinstance(csr_pem, str):
            csr_pem = csr_pem.encode()
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("CSR signature does not verify")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            raise ValueError("CSR has no SubjectAltName") from None
        subject = csr.subject
        start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(seconds=int(ttl_seconds)))
                .add_extension(san.value, critical=san.critical or len(subject) == 0)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=True, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)


def serving_config(service_account="server", namespace="default", ip="127.0.0.1"):
    """A local config whose one workload owns `ip` with the identity
    spiffe://cluster.local/ns/<namespace>/sa/<service_account>: 15008 presents that workload's
    certificate to connections arriving on `ip` (a static identity of that name serves it)."""
    return f"""
workloads:
- uid: test//Pod/{namespace}/{service_account}-1
  name: {service_account}-1
  namespace: {namespace}
  serviceAccount: {service_account}
  trustDomain: cluster.local
  workloadIps: ["{ip}"]
  protocol: HBONE
"""
