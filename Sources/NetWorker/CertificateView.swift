import IPC
import OpenSSLSupport
import Shared

/// Renders the CertWorker's certificate states for operators: the /config_dump `certificates`
/// section in the shape `istioctl ztunnel-config certificates` reads (ISTIO_COMPAT §17.2), with
/// our additions (`nextRenewal`, `failedRenewals`, `signatures`, `issuer`), and the metrics.
/// Only public material is handled here.
enum CertificateView {
    static func configDumpEntry(_ status: CertificateStatus, _ material: IdentityMaterial?) -> JSON {
        let chain = material.flatMap { try? Certificate.parseChain(pem: $0.certificateChainPEM) } ?? []
        let roots = material.flatMap { try? Certificate.parseChain(pem: $0.rootsPEM) } ?? []
        var members: [(String, JSON)] = [
            ("identity", .string(status.spiffeId)),
            ("state", .string(status.state)),
            ("certChain", .array(chain.map(certificateEntry))),
            ("rootCerts", .array(roots.map(certificateEntry))),
            ("failedRenewals", .int(Int64(status.failedRenewals))),
            ("signatures", .int(Int64(clamping: status.signatures))),
        ]
        if status.nextRenewal > 0 { members.append(("nextRenewal", .string(Clock.rfc3339(seconds: Int(status.nextRenewal))))) }
        if let leaf = chain.first { members.append(("issuer", .string(leaf.issuerText))) }
        return .object(members)
    }

    private static func certificateEntry(_ certificate: Certificate) -> JSON {
        let (notBefore, notAfter) = certificate.validity
        let pem = (try? certificate.pem()) ?? ""
        return .object([
            ("pem", .string(Base64.encode(Array(pem.utf8)))),
            ("serialNumber", .string(certificate.serialNumberHex)),
            ("validFrom", .string(Clock.rfc3339(seconds: notBefore))),
            ("expirationTime", .string(Clock.rfc3339(seconds: notAfter))),
        ])
    }
}

/// Per-identity certificate metrics: the expiry users ask upstream for, and failed renewals.
enum CertificateMetrics {
    static func lines(_ statuses: [CertificateStatus], _ materials: [String: IdentityMaterial],
                      now: Int = Int(Clock.epochSeconds())) -> [String] {
        var lines = [
            "# HELP ztunnel_certificate_expiry_seconds Seconds until the identity's current certificate expires.",
            "# TYPE ztunnel_certificate_expiry_seconds gauge",
        ]
        for status in statuses {
            guard let material = materials[status.spiffeId],
                  let leaf = (try? Certificate.parseChain(pem: material.certificateChainPEM))?.first else { continue }
            lines.append("ztunnel_certificate_expiry_seconds{identity=\"\(status.spiffeId)\"} \(leaf.validity.notAfter - now)")
        }
        lines += [
            "# HELP ztunnel_certificate_renewal_failures Failed certificate requests per identity.",
            "# TYPE ztunnel_certificate_renewal_failures counter",
        ]
        for status in statuses {
            lines.append("ztunnel_certificate_renewal_failures_total{identity=\"\(status.spiffeId)\"} \(status.failedRenewals)")
        }
        return lines
    }
}
