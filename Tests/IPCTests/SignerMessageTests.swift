import Testing
@testable import IPC
import Shared

/// The signer channel's messages and the CertWorker's audit message: round trips and refusals.
@Suite struct SignerMessageTests {
    static let material = IdentityMaterial(spiffeId: "spiffe://cluster.local/ns/a/sa/b", certificateChainPEM: "-----BEGIN CERTIFICATE-----\n",
                                           rootsPEM: "roots", handle: [UInt8](repeating: 7, count: 32))

    func roundTrip(_ frame: IPCFrame) throws -> IPCFrame { try IPCFrame.decode(packet: try frame.encodedBytes(), fds: []) }

    @Test func roundTrips() throws {
        for message in [CertWorkerMessage.identity(Self.material), .signature([1, 2, 3]), .signRefused("unknown key handle")] {
            let frame = try roundTrip(message.frame(requestId: 42))
            #expect(frame.requestId == 42)
            #expect(try CertWorkerMessage.decode(frame) == message)
        }
        let request = SignerRequest.sign(handle: Self.material.handle, algorithm: 1, digest: [UInt8](repeating: 9, count: 32))
        #expect(try SignerRequest.decode(try roundTrip(request.frame(requestId: 5))) == request)
        let audit = WorkerMessage.audit(event: "sign_refused", fields: [("reason", "unknown key handle"), ("net_worker", "0")])
        #expect(try WorkerMessage.decode(try roundTrip(audit.frame())) == audit)
    }

    @Test func refusals() throws {
        var bad = Self.material
        bad.handle = [1, 2, 3]
        #expect(throws: IPCError.malformed("key handle of 3 bytes")) { try CertWorkerMessage.decode(CertWorkerMessage.identity(bad).frame()) }
        #expect(throws: IPCError.malformed("empty signature")) { try CertWorkerMessage.decode(CertWorkerMessage.signature([]).frame()) }
        var trailing = SignerRequest.sign(handle: [1], algorithm: 1, digest: [2]).frame(requestId: 1)
        trailing.payload.append(0)
        #expect(throws: IPCError.trailingBytes(type: "sign", count: 1)) { try SignerRequest.decode(trailing) }
        // Each decoder knows only its own direction's types.
        #expect(throws: IPCError.unknownType(0x0401)) { try CertWorkerMessage.decode(trailing) }
        #expect(throws: IPCError.unknownType(0x0302)) { try SignerRequest.decode(CertWorkerMessage.signature([1]).frame()) }
        // An audit event name is a plain identifier: nothing a log reader could mistake for structure.
        let forged = WorkerMessage.audit(event: "worker_exit\",\"seq\":1", fields: []).frame()
        #expect(throws: IPCError.self) { try WorkerMessage.decode(forged) }
    }
}
