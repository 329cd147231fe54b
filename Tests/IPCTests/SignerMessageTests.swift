import Testing
@testable import IPC
import Shared

/// The signer channel's messages and the CertWorker's audit message: round trips and refusals.
@Suite struct SignerMessageTests {
    static let material = IdentityMaterial(spiffeId: "spiffe://cluster.local/ns/a/sa/b", certificateChainPEM: "-----BEGIN CERTIFICATE-----\n",
                                           rootsPEM: "roots", handle: [UInt8](repeating: 7, count: 32))

    func roundTrip(_ frame: IPCFrame) throws -> IPCFrame { try IPCFrame.decode(packet: try frame.encodedBytes(), fds: []) }

    @Test func roundTrips() throws {
        for message in [CertWorkerMessage.identity(Self.material), .signature([1, 2, 3]), .signRefused("unknown key handle"),
                        .withdraw(spiffeId: Self.material.spiffeId)] {
            let frame = try roundTrip(message.frame(requestId: 42))
            #expect(frame.requestId == 42)
            #expect(try CertWorkerMessage.decode(frame) == message)
        }
        let request = SignerRequest.sign(handle: Self.material.handle, algorithm: 1,
                                         content: CertificateVerifyContent.make(.server, transcriptHash: [UInt8](repeating: 9, count: 32)))
        #expect(try SignerRequest.decode(try roundTrip(request.frame(requestId: 5))) == request)
        let audit = WorkerMessage.audit(event: "sign_refused", fields: [("reason", "unknown key handle"), ("net_worker", "0")])
        #expect(try WorkerMessage.decode(try roundTrip(audit.frame())) == audit)
    }

    @Test func refusals() throws {
        var bad = Self.material
        bad.handle = [1, 2, 3]
        #expect(throws: IPCError.malformed("key handle of 3 bytes")) { try CertWorkerMessage.decode(CertWorkerMessage.identity(bad).frame()) }
        #expect(throws: IPCError.malformed("empty signature")) { try CertWorkerMessage.decode(CertWorkerMessage.signature([]).frame()) }
        var trailing = SignerRequest.sign(handle: [1], algorithm: 1, content: [2]).frame(requestId: 1)
        trailing.payload.append(0)
        #expect(throws: IPCError.trailingBytes(type: "sign", count: 1)) { try SignerRequest.decode(trailing) }
        // Each decoder knows only its own direction's types.
        #expect(throws: IPCError.unknownType(0x0401)) { try CertWorkerMessage.decode(trailing) }
        #expect(throws: IPCError.unknownType(0x0302)) { try SignerRequest.decode(CertWorkerMessage.signature([1]).frame()) }
        // An audit event name is a plain identifier: nothing a log reader could mistake for structure.
        let forged = WorkerMessage.audit(event: "worker_exit\",\"seq\":1", fields: []).frame()
        #expect(throws: IPCError.self) { try WorkerMessage.decode(forged) }
    }

    /// Issue #6: the only thing a NetWorker may have signed is a TLS 1.3 CertificateVerify input.
    @Test func certificateVerifyContentShape() {
        let hash32 = [UInt8](repeating: 0xab, count: 32)
        let hash48 = [UInt8](repeating: 0xcd, count: 48)
        #expect(CertificateVerifyContent.side(of: CertificateVerifyContent.make(.server, transcriptHash: hash32)) == .server)
        #expect(CertificateVerifyContent.side(of: CertificateVerifyContent.make(.client, transcriptHash: hash48)) == .client)
        #expect(CertificateVerifyContent.make(.client, transcriptHash: hash48).count == CertificateVerifyContent.maxLength)
        // A bare digest, other hash lengths, a wrong context, padding or separator: all refused.
        #expect(CertificateVerifyContent.side(of: hash32) == nil)
        #expect(CertificateVerifyContent.side(of: CertificateVerifyContent.make(.server, transcriptHash: Array(hash32.prefix(31)))) == nil)
        #expect(CertificateVerifyContent.side(of: CertificateVerifyContent.make(.server, transcriptHash: hash32 + [1])) == nil)
        var wrongContext = CertificateVerifyContent.make(.server, transcriptHash: hash32)
        wrongContext[70] ^= 1
        #expect(CertificateVerifyContent.side(of: wrongContext) == nil)
        var wrongPadding = CertificateVerifyContent.make(.server, transcriptHash: hash32)
        wrongPadding[3] = 0x21
        #expect(CertificateVerifyContent.side(of: wrongPadding) == nil)
        var wrongSeparator = CertificateVerifyContent.make(.server, transcriptHash: hash32)
        wrongSeparator[97] = 1
        #expect(CertificateVerifyContent.side(of: wrongSeparator) == nil)
        #expect(CertificateVerifyContent.side(of: [UInt8](repeating: 0x20, count: 130)) == nil)
    }
}
