internal import COpenSSL
internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// One X.509 certificate (owns its X509*). Public material only: nothing here touches a private
/// key, so the NetWorker links this too.
public final class Certificate: @unchecked Sendable {
    let x509: OpaquePointer

    init(takingOwnershipOf x509: OpaquePointer) { self.x509 = x509 }

    /// Takes ownership of an X509* the caller made (a certificate being issued).
    public convenience init(adopting x509: OpaquePointer) { self.init(takingOwnershipOf: x509) }

    /// Wraps an X509* that OpenSSL owns (a peer certificate), taking a reference of its own.
    public init(retaining x509: OpaquePointer) {
        X509_up_ref(x509)
        self.x509 = x509
    }

    deinit { X509_free(x509) }

    /// Every certificate in a PEM text, in order. Throws if there is none or one does not parse.
    public static func parseChain(pem: String) throws -> [Certificate] {
        let bytes = Array(pem.utf8)
        var chain: [Certificate] = []
        var last: UInt = 0
        // The BIO reads the bytes in place: every read happens while they are pinned.
        try bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { throw OpenSSLError("BIO_new_mem_buf") }
            defer { BIO_free(bio) }
            OpenSSLError.clearQueue()
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                chain.append(Certificate(takingOwnershipOf: x509))
            }
            // The loop ends with PEM_R_NO_START_LINE at the end of the text; anything else is an error.
            last = ERR_peek_last_error()
        }
        if chain.isEmpty || (last != 0 && CShims_ERR_GET_REASON(last) != PEM_R_NO_START_LINE) {
            throw OpenSSLError("parsing PEM certificates")
        }
        ERR_clear_error()
        return chain
    }

    /// The URI SANs that parse as SPIFFE ids (ISTIO_COMPAT §3), in order.
    public var spiffeIds: [String] {
        guard let names = X509_get_ext_d2i(x509, NID_subject_alt_name, nil, nil) else { return [] }
        return Self.uris(in: OpaquePointer(names)).filter { SpiffeId($0) != nil }
    }

    /// The URIs in a subjectAltName extension (a CSR's requested one, say).
    public static func uris(inSubjectAltName ext: OpaquePointer) -> [String] {
        guard let names = X509V3_EXT_d2i(ext) else { return [] }
        return uris(in: OpaquePointer(names))
    }

    /// The URI entries of a GENERAL_NAMES stack, which this frees.
    private static func uris(in stack: OpaquePointer) -> [String] {
        defer { GENERAL_NAMES_free(stack) }
        var result: [String] = []
        for index in 0..<CShims_sk_GENERAL_NAME_num(UnsafeMutableRawPointer(stack)) {
            guard let raw = CShims_sk_GENERAL_NAME_value(UnsafeMutableRawPointer(stack), index) else { continue }
            let name = raw.assumingMemoryBound(to: GENERAL_NAME.self)
            guard name.pointee.type == GEN_URI, let uri = name.pointee.d.uniformResourceIdentifier,
                  let data = ASN1_STRING_get0_data(uri) else { continue }
            result.append(String(decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(uri))), as: UTF8.self))
        }
        return result
    }

    /// The certificate as PEM text.
    public func pem() throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError("BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_X509(bio, x509) == 1 else { throw OpenSSLError("PEM_write_bio_X509") }
        var pointer: UnsafeMutablePointer<CChar>?
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &pointer)
        guard length > 0, let pointer else { throw OpenSSLError("BIO contents") }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    }

    /// SHA-256 of the DER encoding, lowercase hex: the fingerprint audit events carry.
    public var sha256Fingerprint: String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard X509_digest(x509, EVP_sha256(), &digest, &length) == 1 else { return "" }
        return digest.prefix(Int(length)).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// The issuer's distinguished name, one line (RFC 2253).
    public var issuerText: String { Self.nameText(X509_get_issuer_name(x509)) }

    private static func nameText(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, name, 0, CShims_XN_FLAG_RFC2253()) >= 0 else { return "" }
        var pointer: UnsafeMutablePointer<CChar>?
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &pointer)
        guard length > 0, let pointer else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo: the key handle's name.
    public func publicKeyDigest() throws -> [UInt8] {
        guard let key = X509_get0_pubkey(x509) else { throw OpenSSLError("X509_get0_pubkey") }
        var der: UnsafeMutablePointer<UInt8>?
        let length = i2d_PUBKEY(key, &der)
        guard length > 0, let der else { throw OpenSSLError("i2d_PUBKEY") }
        defer { CRYPTO_free(der, #file, #line) }
        var digest = [UInt8](repeating: 0, count: 32)
        guard SHA256(der, Int(length), &digest) != nil else { throw OpenSSLError("SHA256") }
        return digest
    }

    public var serialNumberHex: String {
        guard let serial = X509_get0_serialNumber(x509), let bn = ASN1_INTEGER_to_BN(serial, nil) else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { CRYPTO_free(hex, #file, #line) }
        return String(cString: hex).lowercased()
    }

    /// Seconds since the epoch of notBefore and notAfter.
    public var validity: (notBefore: Int, notAfter: Int) {
        (Self.epochSeconds(X509_get0_notBefore(x509)), Self.epochSeconds(X509_get0_notAfter(x509)))
    }

    private static func epochSeconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int {
        guard let time else { return 0 }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return 0 }
        return timegm(&parts)
    }

    /// Borrows the X509* for the duration of `body` (for OpenSSL calls in this module's users).
    public func withUnsafeX509<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R { try body(x509) }
}

/// A SPIFFE id as ztunnel parses it: `spiffe://<td>/ns/<ns>/sa/<sa>`, exactly five segments,
/// and valid to the SPIFFE ID specification (§2): the trust domain of lowercase letters, digits,
/// `.`, `-` and `_` (at most 255 bytes), each path segment of letters, digits, `.`, `-` and `_`
/// and neither `.` nor `..`, the whole id at most 2048 bytes. Issue #6: ids are spliced into
/// OpenSSL configuration strings, audit lines and Prometheus labels, so nothing else may pass.
public struct SpiffeId: Equatable, Sendable, CustomStringConvertible {
    public let trustDomain: String
    public let namespace: String
    public let serviceAccount: String

    public static let maxLength = 2048

    public init?(_ text: String) {
        guard text.utf8.count <= Self.maxLength, text.hasPrefix("spiffe://") else { return nil }
        let parts = text.dropFirst("spiffe://".count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[1] == "ns", parts[3] == "sa" else { return nil }
        guard Self.isTrustDomain(parts[0]), Self.isSegment(parts[2]), Self.isSegment(parts[4]) else { return nil }
        trustDomain = String(parts[0])
        namespace = String(parts[2])
        serviceAccount = String(parts[4])
    }

    static func isTrustDomain(_ text: Substring) -> Bool {
        !text.isEmpty && text.utf8.count <= 255
            && text.utf8.allSatisfy { (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2e || $0 == 0x2d || $0 == 0x5f }
    }

    static func isSegment(_ text: Substring) -> Bool {
        !text.isEmpty && text != "." && text != ".."
            && text.utf8.allSatisfy {
                (0x61...0x7a).contains($0) || (0x41...0x5a).contains($0) || (0x30...0x39).contains($0)
                    || $0 == 0x2e || $0 == 0x2d || $0 == 0x5f
            }
    }

    public var description: String { "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)" }
}
