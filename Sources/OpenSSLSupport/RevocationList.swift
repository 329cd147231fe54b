internal import COpenSSL
internal import CShims
import Shared

/// The certificate revocation lists of `CRL_PATH` (ISTIO_COMPAT §18), as upstream ztunnel reads
/// and applies them: PEM (any number of `X509 CRL` blocks) or one DER CRL; an empty file, or one
/// with no PEM block, revokes nothing. A list is used for a certificate when it names the
/// certificate's issuer and its signature verifies with that issuer's key (which, if it has a
/// key usage, allows CRL signing); every certificate of the verified chain but the trust
/// anchor is checked; a certificate whose issuer has no list passes, and a list past its
/// nextUpdate still counts (upstream: unknown status allowed, expiry ignored).
///
/// Refused whole, so the caller keeps what it had: bytes that parse as neither, a PEM block that
/// is no CRL, trailing bytes after a DER CRL, a delta CRL, an indirect or reason-partitioned one
/// (issuingDistributionPoint), an unknown critical extension, more than `maxLists` lists or
/// `maxBytes` bytes. The bytes come from a file an operator mounts (a ConfigMap): parsed in the
/// NetWorker, which holds no key, and fuzzed (`Fuzz/crl`).
public final class RevocationList: @unchecked Sendable {
    public static let maxBytes = 16 << 20
    public static let maxLists = 64

    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    private let crls: [OpaquePointer]
    /// Whether list `index` is signed by the issuer certificate with this SHA-256 (its key and its
    /// key usage both decide): a verified chain names the same few issuers again and again, and
    /// an ECDSA or RSA check is not free.
    private var signedBy: [String: Bool] = [:]
    private let lock = Mutex()

    /// How many lists, and how many revoked certificates they name in all.
    public let count: Int
    public let revokedEntries: Int

    /// No list: nothing is revoked.
    public init() {
        crls = []
        count = 0
        revokedEntries = 0
    }

    public init(parsing bytes: [UInt8]) throws {
        guard bytes.count <= Self.maxBytes else { throw Refused(description: "\(bytes.count) bytes, over \(Self.maxBytes)") }
        var parsed: [OpaquePointer] = []
        do {
            if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }) {
                // Empty: nothing revoked.
            } else if Self.isPEM(bytes) {
                parsed = try Self.parsePEM(bytes)
            } else {
                parsed = [try Self.parseDER(bytes)]
            }
            for crl in parsed { try Self.check(crl) }
        } catch {
            for crl in parsed { X509_CRL_free(crl) }
            throw error
        }
        crls = parsed
        count = parsed.count
        revokedEntries = parsed.reduce(0) { $0 + Int(CShims_X509_CRL_revoked_count($1)) }
    }

    deinit { for crl in crls { X509_CRL_free(crl) } }

    private static func isPEM(_ bytes: [UInt8]) -> Bool {
        let begin = Array("-----BEGIN ".utf8)
        return bytes.count >= begin.count && (0...(bytes.count - begin.count)).contains { start in
            bytes[start..<(start + begin.count)].elementsEqual(begin)
        }
    }

    /// Every PEM block must be an `X509 CRL`: another kind (a certificate, a key) is refused, not
    /// skipped, so a CRL_PATH pointed at the wrong file is said rather than revoking nothing.
    private static func parsePEM(_ bytes: [UInt8]) throws -> [OpaquePointer] {
        let blocks = occurrences(of: Array("-----BEGIN ".utf8), in: bytes)
        guard blocks <= maxLists else { throw Refused(description: "\(blocks) PEM blocks, over \(maxLists)") }
        var parsed: [OpaquePointer] = []
        var error: UInt = 0
        // The BIO reads the bytes in place: every read happens while they are pinned.
        try bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { throw Refused(description: "out of memory") }
            defer { BIO_free(bio) }
            OpenSSLError.clearQueue()
            while parsed.count < blocks, let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) { parsed.append(crl) }
            error = ERR_peek_last_error()
            ERR_clear_error()
        }
        guard parsed.count == blocks, error == 0 || CShims_ERR_GET_REASON(error) == PEM_R_NO_START_LINE else {
            for crl in parsed { X509_CRL_free(crl) }
            throw Refused(description: "PEM block \(parsed.count + 1) of \(blocks) is no X509 CRL that parses")
        }
        return parsed
    }

    private static func parseDER(_ bytes: [UInt8]) throws -> OpaquePointer {
        OpenSSLError.clearQueue()
        defer { ERR_clear_error() }
        return try bytes.withUnsafeBufferPointer { buffer -> OpaquePointer in
            guard let start = buffer.baseAddress, bytes.count <= Int(Int32.max) else { throw Refused(description: "empty") }
            var cursor: UnsafePointer<UInt8>? = start
            guard let crl = d2i_X509_CRL(nil, &cursor, bytes.count), let end = cursor else {
                throw Refused(description: "neither PEM nor a DER CRL that parses")
            }
            guard end - start == bytes.count else {
                X509_CRL_free(crl)
                throw Refused(description: "\(bytes.count - (end - start)) bytes after the DER CRL")
            }
            return crl
        }
    }

    /// Delta, indirect and reason-partitioned lists would each need rules this check does not
    /// have (webpki refuses them too); so would any critical extension it does not know.
    private static func check(_ crl: OpaquePointer) throws {
        let known: Set<Int32> = [NID_crl_number, NID_authority_key_identifier, NID_issuing_distribution_point]
        for index in 0..<X509_CRL_get_ext_count(crl) {
            guard let ext = X509_CRL_get_ext(crl, index) else { continue }
            let nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext))
            if nid == NID_delta_crl { throw Refused(description: "a delta CRL") }
            if X509_EXTENSION_get_critical(ext) != 0 && !known.contains(nid) {
                throw Refused(description: "an unknown critical extension (\(nid == NID_undef ? "unknown" : String(cString: OBJ_nid2sn(nid))))")
            }
        }
        switch CShims_X509_CRL_idp_is_narrowed(crl) {
        case 0: break
        case 1: throw Refused(description: "an indirect or reason-partitioned CRL (issuingDistributionPoint)")
        default: throw Refused(description: "an issuingDistributionPoint that does not parse")
        }
        for index in 0..<CShims_X509_CRL_revoked_count(crl) {
            guard let entry = CShims_X509_CRL_revoked_value(crl, index) else { continue }
            for ext in 0..<X509_REVOKED_get_ext_count(entry) {
                guard let e = X509_REVOKED_get_ext(entry, ext), X509_EXTENSION_get_critical(e) != 0 else { continue }
                // A certificate issuer entry extension makes the list indirect after all.
                throw Refused(description: "a critical extension on revoked entry \(index + 1)")
            }
        }
    }

    private static func occurrences(of needle: [UInt8], in bytes: [UInt8]) -> Int {
        guard bytes.count >= needle.count else { return 0 }
        var count = 0
        var start = 0
        while start <= bytes.count - needle.count {
            if bytes[start] == needle[0] && bytes[start..<(start + needle.count)].elementsEqual(needle) {
                count += 1
                start += needle.count
            } else {
                start += 1
            }
        }
        return count
    }

    /// The first certificate of a verified chain (leaf first, the trust anchor last) that a list
    /// of its issuer names, described (serial and issuer); nil when none is.
    public func revoked(in chain: [Certificate]) -> String? {
        guard !crls.isEmpty, chain.count >= 2 else { return nil }
        for position in 0..<(chain.count - 1) {
            let certificate = chain[position].x509
            let issuer = chain[position + 1].x509
            for (index, crl) in crls.enumerated()
            where X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_issuer_name(certificate)) == 0 && isSigned(index, by: issuer) {
                var entry: OpaquePointer?
                guard let serial = X509_get0_serialNumber(certificate),
                      X509_CRL_get0_by_serial(crl, &entry, UnsafeMutablePointer(mutating: serial)) == 1 else { continue }
                return "serial \(Self.hex(serial)) issued by \(Self.oneLine(X509_get_issuer_name(certificate)))"
            }
        }
        return nil
    }

    private func isSigned(_ index: Int, by issuer: OpaquePointer) -> Bool {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard X509_digest(issuer, EVP_sha256(), &digest, &length) == 1 else { return false }
        let key = "\(index)/" + digest.prefix(Int(length)).map { String($0, radix: 16) }.joined(separator: ":")
        if let known = lock.withLock({ signedBy[key] }) { return known }
        // A key usage, if the issuer has one, must allow CRL signing (RFC 5280 §4.2.1.3).
        let usage = X509_get_key_usage(issuer)
        let allowed = usage == UInt32.max || usage & UInt32(KU_CRL_SIGN) != 0
        let signed = allowed && X509_get0_pubkey(issuer).map { X509_CRL_verify(crls[index], $0) == 1 } == true
        ERR_clear_error()
        let first = lock.withLock { () -> Bool in
            guard signedBy.count < 4096 else { return false }
            return signedBy.updateValue(signed, forKey: key) == nil
        }
        if !signed && first {
            // Said once per list and issuer (the answer is kept): a list that names an issuer and
            // never applies to it would otherwise look like revocation working.
            Log.warn("a revocation list names this issuer but is not signed by it" + (allowed ? "" : " (its key usage has no cRLSign)")
                     + "; it is not used for its certificates", [("list", "\(index + 1)"), ("issuer", Self.oneLine(X509_get_subject_name(issuer)))])
        }
        return signed
    }

    private static func hex(_ serial: UnsafePointer<ASN1_INTEGER>) -> String {
        let data = UnsafeBufferPointer(start: serial.pointee.data, count: Int(max(0, serial.pointee.length)))
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: data.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    private static func oneLine(_ name: OpaquePointer?) -> String {
        guard let name, let text = X509_NAME_oneline(name, nil, 0) else { return "?" }
        defer { CRYPTO_free(text, nil, 0) }
        return String(cString: text)
    }

    /// A verified chain as OpenSSL hands it over (`SSL_get0_verified_chain`), each certificate
    /// retained, for `revoked(in:)` now and again when the lists change.
    public static func chain(_ stack: OpaquePointer?) -> [Certificate] {
        guard let stack else { return [] }
        return (0..<CShims_sk_X509_num(UnsafeRawPointer(stack))).compactMap { index in
            CShims_sk_X509_value(UnsafeRawPointer(stack), index).map { Certificate(retaining: $0) }
        }
    }
}
