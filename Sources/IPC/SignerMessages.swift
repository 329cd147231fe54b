import Shared

/// The signer channel: one SOCK_SEQPACKET socketpair per NetWorker, made by the Supervisor, with
/// the CertWorker at the other end. The CertWorker pushes each identity's public material and an
/// opaque key handle; the NetWorker asks it to sign TLS handshakes with that handle. No private
/// key ever crosses this channel (STYLE.md §4, the OpenSSH monitor pattern).
public enum SignatureAlgorithm: UInt8, Sendable {
    /// ECDSA P-256 with SHA-256 (TLS `ecdsa_secp256r1_sha256`) over a TLS 1.3 CertificateVerify
    /// content, which the CertWorker checks and hashes itself.
    case ecdsaP256SHA256 = 1
}

/// The only thing the CertWorker signs: the content of a TLS 1.3 CertificateVerify (RFC 8446
/// §4.4.3): 64 bytes of 0x20, the server or client context string, one 0x00, then the
/// handshake transcript hash (32 bytes with a SHA-256 suite, 48 with SHA-384). A NetWorker sends
/// this unhashed content instead of a digest, so that a compromised NetWorker holding a key
/// handle cannot obtain a signature over anything but a handshake transcript (OpenSSH's monitor
/// binds what it signs in the same way). What it cannot check: that the transcript is of a
/// handshake that really happens; the handle's certificate still only authenticates TLS.
public enum CertificateVerifyContent {
    public enum Side: String, Sendable, Equatable {
        case server = "TLS 1.3, server CertificateVerify"
        case client = "TLS 1.3, client CertificateVerify"
    }

    static let padding = [UInt8](repeating: 0x20, count: 64)
    public static let transcriptHashLengths: Set<Int> = [32, 48]
    /// The longest valid content: padding, context, separator, a SHA-384 transcript hash.
    public static let maxLength = 64 + 33 + 1 + 48

    /// The side whose context the content carries, or nil when it is not exactly a TLS 1.3
    /// CertificateVerify content.
    public static func side(of content: [UInt8]) -> Side? {
        guard content.count > 98, content.starts(with: padding) else { return nil }
        for side in [Side.server, .client] {
            let context = Array(side.rawValue.utf8)
            let separator = 64 + context.count
            guard content.count > separator, Array(content[64..<separator]) == context, content[separator] == 0 else { continue }
            return transcriptHashLengths.contains(content.count - separator - 1) ? side : nil
        }
        return nil
    }

    /// A well-formed content for `side` around `transcriptHash` (tests and fuzz seeds).
    public static func make(_ side: Side, transcriptHash: [UInt8]) -> [UInt8] {
        padding + Array(side.rawValue.utf8) + [0] + transcriptHash
    }
}

/// What a NetWorker receives about one identity: never its private key.
public struct IdentityMaterial: Equatable, Sendable {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    public var spiffeId: String
    /// PEM: the leaf, then intermediates.
    public var certificateChainPEM: String
    /// PEM: the trust anchors for this identity's trust domain.
    public var rootsPEM: String
    /// SHA-256 of the key's SubjectPublicKeyInfo (DER): names the key, reveals nothing of it.
    public var handle: [UInt8]

    public init(spiffeId: String, certificateChainPEM: String, rootsPEM: String, handle: [UInt8]) {
        self.spiffeId = spiffeId
        self.certificateChainPEM = certificateChainPEM
        self.rootsPEM = rootsPEM
        self.handle = handle
    }
}

/// The CertWorker's view of one identity, for /config_dump, `ztunnel certs` and the metrics.
/// The certificates themselves travel in `identity` messages; this is small, so the whole list
/// fits one frame.
public struct CertificateStatus: Equatable, Sendable {
    public var spiffeId: String
    /// `Initializing`, `Available` or `Unavailable: <reason>` (ISTIO_COMPAT §17.2).
    public var state: String
    /// Seconds since the epoch of the next renewal; 0 when none is scheduled (static files).
    public var nextRenewal: Int64
    public var failedRenewals: UInt32
    public var signatures: UInt64

    public init(spiffeId: String, state: String, nextRenewal: Int64, failedRenewals: UInt32, signatures: UInt64) {
        self.spiffeId = spiffeId
        self.state = state
        self.nextRenewal = nextRenewal
        self.failedRenewals = failedRenewals
        self.signatures = signatures
    }
}

extension IdentityMaterial {
    /// Whether an `identity` message with this material fits what the decoder accepts.
    public var fitsOneMessage: Bool {
        spiffeId.utf8.count <= 2048 && certificateChainPEM.utf8.count <= 32 * 1024 && rootsPEM.utf8.count <= 16 * 1024
            && handle.count == 32
    }
}

/// Messages from the CertWorker to a NetWorker on the signer channel.
public enum CertWorkerMessage: Equatable, Sendable {
    /// An identity is available (or its certificate changed: the new handle replaces the old).
    case identity(IdentityMaterial)
    /// The signature for request `requestId` (the frame's request id): DER ECDSA.
    case signature([UInt8])
    /// The request was refused; the reason is for the NetWorker's log.
    case signRefused(String)
    /// Every identity's certificate state (the whole list; replaces the previous one).
    case status([CertificateStatus])
    /// The identity is gone (its last workload left): drop its certificate and handle. A sign
    /// request already on its way is answered `signRefused` without counting against the sender.
    case withdraw(spiffeId: String)

    public enum Code: UInt16, CaseIterable {
        case identity = 0x0301, signature = 0x0302, signRefused = 0x0303, status = 0x0304, withdraw = 0x0305
    }

    public var code: Code {
        switch self {
        case .identity: return .identity
        case .signature: return .signature
        case .signRefused: return .signRefused
        case .status: return .status
        case .withdraw: return .withdraw
        }
    }

    public func frame(requestId: UInt32 = 0) -> IPCFrame {
        var writer = WireWriter()
        switch self {
        case .withdraw(let spiffeId): writer.string(spiffeId)
        case .identity(let material):
            writer.string(material.spiffeId)
            writer.string(material.certificateChainPEM)
            writer.string(material.rootsPEM)
            writer.data(material.handle)
        case .signature(let bytes): writer.data(bytes)
        case .signRefused(let reason): writer.string(reason)
        case .status(let entries):
            writer.u16(UInt16(entries.count))
            for entry in entries {
                writer.string(entry.spiffeId); writer.string(entry.state)
                writer.i64(entry.nextRenewal); writer.u32(entry.failedRenewals); writer.u64(entry.signatures)
            }
        }
        return IPCFrame(type: code.rawValue, requestId: requestId, payload: writer.bytes)
    }

    public static func decode(_ frame: IPCFrame) throws -> CertWorkerMessage {
        guard let code = Code(rawValue: frame.type) else { throw IPCError.unknownType(frame.type) }
        guard frame.fds.isEmpty else { throw IPCError.wrongFdCount(type: "\(code)", expected: 0, actual: frame.fds.count) }
        var reader = WireReader(frame.payload)
        let message: CertWorkerMessage
        switch code {
        case .identity:
            let spiffeId = try reader.string("spiffe id", max: 2048)
            let chain = try reader.string("certificate chain", max: 32 * 1024)
            let roots = try reader.string("roots", max: 16 * 1024)
            let handle = try reader.data("key handle", max: 32)
            guard handle.count == 32 else { throw IPCError.malformed("key handle of \(handle.count) bytes") }
            message = .identity(IdentityMaterial(spiffeId: spiffeId, certificateChainPEM: chain, rootsPEM: roots, handle: handle))
        case .signature:
            let signature = try reader.data("signature", max: 256)
            guard !signature.isEmpty else { throw IPCError.malformed("empty signature") }
            message = .signature(signature)
        case .signRefused: message = .signRefused(try reader.string("refusal", max: 512))
        case .status:
            let count = try reader.count("certificate statuses", max: 512)
            var entries: [CertificateStatus] = []
            for _ in 0..<count {
                entries.append(CertificateStatus(
                    spiffeId: try reader.string("spiffe id", max: 2048), state: try reader.string("state", max: 256),
                    nextRenewal: try reader.i64("next renewal"), failedRenewals: try reader.u32("failed renewals"),
                    signatures: try reader.u64("signatures")))
            }
            message = .status(entries)
        case .withdraw: message = .withdraw(spiffeId: try reader.string("spiffe id", max: 2048))
        }
        try reader.finish("\(code)")
        return message
    }
}

/// Messages from a NetWorker to the CertWorker. The CertWorker treats each as untrusted input from
/// a process that parses network traffic.
public enum SignerRequest: Equatable, Sendable {
    /// Sign a TLS 1.3 CertificateVerify content (`CertificateVerifyContent`) with the key named by
    /// the handle; answered by `signature` or `signRefused` with the same request id.
    case sign(handle: [UInt8], algorithm: UInt8, content: [UInt8])
    /// The identities this NetWorker needs certificates for (its whole list: anything it wanted
    /// before and does not list now may be forgotten).
    case want(identities: [String])

    public enum Code: UInt16, CaseIterable { case sign = 0x0401, want = 0x0402 }

    public var code: Code {
        switch self {
        case .sign: return .sign
        case .want: return .want
        }
    }

    public func frame(requestId: UInt32) -> IPCFrame {
        var writer = WireWriter()
        switch self {
        case .sign(let handle, let algorithm, let content):
            writer.data(handle); writer.u8(algorithm); writer.data(content)
        case .want(let identities):
            writer.u16(UInt16(identities.count))
            for identity in identities { writer.string(identity) }
        }
        return IPCFrame(type: code.rawValue, requestId: requestId, payload: writer.bytes)
    }

    /// Decodes the shape only; whether a handle, algorithm, digest or identity is acceptable is
    /// the CertWorker's decision against its own state.
    public static func decode(_ frame: IPCFrame) throws -> SignerRequest {
        guard let code = Code(rawValue: frame.type) else { throw IPCError.unknownType(frame.type) }
        guard frame.fds.isEmpty else { throw IPCError.wrongFdCount(type: "\(code)", expected: 0, actual: frame.fds.count) }
        var reader = WireReader(frame.payload)
        let request: SignerRequest
        switch code {
        case .sign:
            request = .sign(handle: try reader.data("key handle", max: 64), algorithm: try reader.u8("algorithm"),
                            content: try reader.data("content", max: 256))
        case .want:
            let count = try reader.count("wanted identities", max: 1024)
            var identities: [String] = []
            for _ in 0..<count { identities.append(try reader.string("identity", max: 2048)) }
            request = .want(identities: identities)
        }
        try reader.finish("\(code)")
        return request
    }
}
