@testable import Supervisor
import Testing

/// The ZDS records istio-cni sends (ISTIO_COMPAT §7.4), written by hand from the field numbers:
/// WorkloadRequest oneof add 1 / del 2 / snapshot_sent 3 / keep 5; AddWorkload uid 1,
/// workload_info 2 (name 1, namespace 2, service_account 3); KeepWorkload uid 1; DelWorkload uid 2.
@Suite struct ZDSMessagesTests {
    static func varint(_ value: Int) -> [UInt8] { ZDS.varint(UInt64(value)) }
    static func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] { varint(number << 3 | 2) + varint(payload.count) + payload }
    static func field(_ number: Int, _ text: String) -> [UInt8] { field(number, Array(text.utf8)) }
    static let info = field(1, "client-1") + field(2, "default") + field(3, "client")
    static let uid = "5f1d2c3a-0000-4000-8000-000000000001"

    @Test func eachRequestDecodes() throws {
        #expect(try ZDS.decodeRequest(Self.field(1, Self.field(1, Self.uid) + Self.field(2, Self.info)))
            == .add(uid: Self.uid, info: .init(name: "client-1", namespace: "default", serviceAccount: "client")))
        #expect(try ZDS.decodeRequest(Self.field(5, Self.field(1, Self.uid))) == .keep(uid: Self.uid))
        #expect(try ZDS.decodeRequest(Self.field(2, Self.field(2, Self.uid))) == .del(uid: Self.uid))
        #expect(try ZDS.decodeRequest(Self.field(3, [])) == .snapshotSent)
        // Unknown fields are skipped, as protobuf readers do (istio-cni may be newer than we are).
        let unknown: [UInt8] = Self.varint(9 << 3 | 0) + [0x2a] + Self.field(10, "x")
        #expect(try ZDS.decodeRequest(unknown + Self.field(3, [])) == .snapshotSent)
    }

    @Test func badRecordsAreRefused() {
        let add = Self.field(1, Self.field(1, Self.uid) + Self.field(2, Self.info))
        let cases: [(String, [UInt8])] = [
            ("empty", []),
            ("two payloads", add + Self.field(3, [])),
            ("Add without workload_info", Self.field(1, Self.field(1, Self.uid))),
            ("Add without a uid", Self.field(1, Self.field(2, Self.info))),
            ("DelWorkload's uid in field 1 (it is field 2)", Self.field(2, Self.field(1, Self.uid))),
            ("a uid with a slash", Self.field(5, Self.field(1, "a/b"))),
            ("a name with a space", Self.field(1, Self.field(1, Self.uid) + Self.field(2, Self.field(1, "a b") + Self.field(2, "ns")))),
            ("a payload as a varint", Self.varint(1 << 3 | 0) + [1]),
            ("truncated", Array(add.dropLast())),
            ("a length past the end", [0x0a, 0x7f, 0x00]),
            ("over 1 KiB", Self.field(10, [UInt8](repeating: 0x61, count: 1100)) + Self.field(3, [])),
            ("not UTF-8", Self.field(5, Self.field(1, [0xff, 0xfe]))),
            ("field number 0", [0x02, 0x00]),
        ]
        for (what, bytes) in cases {
            #expect(throws: ZDS.Malformed.self, "\(what)") { try ZDS.decodeRequest(bytes) }
        }
    }

    @Test func helloAndAcksAreTheBytesIstioCniReads() {
        #expect(ZDS.hello == [0x08, 0x01])  // ZdsHello{version: V1}
        #expect(ZDS.ack() == [0x0a, 0x00])  // WorkloadResponse{ack: Ack{}}
        #expect(ZDS.ack(error: "no") == [0x0a, 0x04, 0x0a, 0x02, 0x6e, 0x6f])
        // A long error is cut to fit a record, never in the middle of a UTF-8 sequence.
        let long = ZDS.ack(error: String(repeating: "é", count: 2000))
        #expect(long.count <= ZDS.maxMessageBytes)
        #expect(String(validating: long.dropFirst(6), as: UTF8.self) != nil)
    }
}
