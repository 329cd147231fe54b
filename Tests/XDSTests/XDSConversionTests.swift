import Foundation
import Mesh
import SwiftProtobuf
import Testing
@testable import XDS

/// istiod's resources into the mesh model (ISTIO_COMPAT §7): the field numbers, checked against
/// bytes written by hand from the spec's tables (not by the generated code), the defaults istiod
/// leaves out, and refusals with their reasons.
@Suite struct XDSConversionTests {
    // MARK: - Wire bytes written from the tables

    /// A protobuf field key: (number << 3) | wire type, as a varint.
    static func key(_ number: Int, _ wireType: Int) -> [UInt8] { varint(UInt64(number << 3 | wireType)) }

    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var bytes: [UInt8] = []
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        return bytes + [UInt8(value)]
    }

    static func bytesField(_ number: Int, _ payload: [UInt8]) -> [UInt8] { key(number, 2) + varint(UInt64(payload.count)) + payload }
    static func stringField(_ number: Int, _ text: String) -> [UInt8] { bytesField(number, Array(text.utf8)) }
    static func varintField(_ number: Int, _ value: UInt64) -> [UInt8] { key(number, 0) + varint(value) }

    @Test func workloadFieldNumbersMatchTheSpec() throws {
        // §7.1 Workload: uid 20, name 1, namespace 2, addresses 3, network 4, tunnel_protocol 5,
        // trust_domain 6, service_account 7, node 9, canonical_name 10, workload_type 12,
        // services 22 (map: key 1, value PortList 2 whose ports are 1: service 1, target 2),
        // authorization_policies 16, status 17, cluster_id 18, capacity 27 (UInt32Value: value 1).
        let port = Self.varintField(1, 80) + Self.varintField(2, 8080)
        let portList = Self.bytesField(1, port)
        let mapEntry = Self.stringField(1, "shop/echo.shop.svc.cluster.local") + Self.bytesField(2, portList)
        let workload = Self.stringField(20, "c1//Pod/shop/echo-1") + Self.stringField(1, "echo-1") + Self.stringField(2, "shop")
            + Self.bytesField(3, [10, 0, 0, 7]) + Self.stringField(4, "net-a") + Self.varintField(5, 1)
            + Self.stringField(6, "td.example") + Self.stringField(7, "echo") + Self.stringField(9, "node-a")
            + Self.stringField(10, "echo") + Self.varintField(12, 2) + Self.bytesField(22, mapEntry)
            + Self.stringField(16, "shop/only-client") + Self.varintField(17, 1) + Self.stringField(18, "c1")
            + Self.bytesField(27, Self.varintField(1, 7))
        let address = Self.bytesField(1, workload)  // Address.workload = 1
        guard case .workload(let converted) = try XDSConversion.address(address) else {
            Issue.record("not a workload")
            return
        }
        #expect(converted.uid == "c1//Pod/shop/echo-1" && converted.name == "echo-1" && converted.namespace == "shop")
        #expect(converted.addresses == [IPAddress("10.0.0.7")].compactMap { $0 } && converted.network == "net-a")
        #expect(converted.tunnelProtocol == .hbone && converted.identity == "spiffe://td.example/ns/shop/sa/echo")
        #expect(converted.node == "node-a" && converted.canonicalName == "echo" && converted.workloadType == .pod)
        #expect(converted.services == ["shop/echo.shop.svc.cluster.local": [80: 8080]])
        #expect(converted.authorizationPolicies == ["shop/only-client"] && converted.status == .unhealthy)
        #expect(converted.clusterId == "c1" && converted.capacity == 7)
    }

    @Test func serviceAndPolicyFieldNumbersMatchTheSpec() throws {
        // §7.1 Service: name 1, namespace 2, hostname 3, addresses 4 (NetworkAddress: network 1,
        // address 2), ports 5, subject_alt_names 6, canonical 11, visibility 14.
        let vip = Self.stringField(1, "") + Self.bytesField(2, [10, 96, 0, 9])
        let service = Self.stringField(1, "echo") + Self.stringField(2, "shop") + Self.stringField(3, "echo.shop.svc.cluster.local")
            + Self.bytesField(4, vip) + Self.bytesField(5, Self.varintField(1, 80) + Self.varintField(2, 8080))
            + Self.stringField(6, "spiffe://td/ns/shop/sa/echo") + Self.varintField(11, 1) + Self.varintField(14, 1)
        guard case .service(let converted) = try XDSConversion.address(Self.bytesField(2, service)) else {
            Issue.record("not a service")
            return
        }
        #expect(converted.key == "shop/echo.shop.svc.cluster.local" && converted.name == "echo")
        #expect(converted.vips.map(\.ip.description) == ["10.96.0.9"] && converted.ports == [80: 8080])
        #expect(converted.subjectAltNames == ["spiffe://td/ns/shop/sa/echo"] && converted.canonical && converted.visibility == .namespace)

        // §7.2 Authorization: name 1, namespace 2, scope 3, action 4, rules 5 (Rule.clauses 1,
        // Clause.matches 2), dry_run 6; Match: principals 3, not_destination_ports 10,
        // source_ips 5 (Address: address 1, length 2); StringMatch: prefix 2, presence 4.
        let principal = Self.stringField(2, "cluster.local/ns/default/")
        let presence = Self.bytesField(4, [])
        let match = Self.bytesField(3, principal) + Self.bytesField(1, presence)
            + Self.bytesField(5, Self.bytesField(1, [192, 168, 0, 0]) + Self.varintField(2, 16)) + Self.varintField(10, 22)
        let policy = Self.stringField(1, "deny-ssh") + Self.stringField(2, "shop") + Self.varintField(3, 1) + Self.varintField(4, 1)
            + Self.bytesField(5, Self.bytesField(1, Self.bytesField(2, match))) + Self.varintField(6, 1)
        let converted2 = try XDSConversion.authorization(policy)
        #expect(converted2.key == "shop/deny-ssh" && converted2.scope == .namespace && converted2.action == .deny && converted2.dryRun)
        let only = try #require(converted2.groups.first?.first?.first)
        #expect(only.principals == [.prefix("cluster.local/ns/default/")] && only.namespaces == [.presence])
        #expect(only.sourceIps.map(\.description) == ["192.168.0.0/16"] && only.notDestinationPorts == [22])
    }

    // MARK: - Defaults and refusals

    @Test func istiodsOmittedDefaultsAreApplied() throws {
        var workload = Istio_Workload_Workload()
        workload.uid = "c//Pod/ns/a"
        workload.namespace = "ns"
        let converted = try XDSConversion.workload(workload)
        #expect(converted.trustDomain == "cluster.local" && converted.serviceAccount == "default")
        #expect(converted.clusterId == "Kubernetes" && converted.capacity == 1 && converted.tunnelProtocol == .none)
        var gateway = Istio_Workload_GatewayAddress()
        gateway.hostname = .with { $0.namespace = "ns"; $0.hostname = "waypoint.ns.svc.cluster.local" }
        workload.waypoint = gateway
        #expect(try XDSConversion.workload(workload).waypoint?.hboneMtlsPort == 15008)
    }

    @Test func badResourcesAreRefusedWithTheirReason() throws {
        var workload = Istio_Workload_Workload()
        workload.uid = "c//Pod/ns/a"
        workload.addresses = [Data3.bytes]
        #expect(throws: XDSConversion.Invalid("workload c//Pod/ns/a: an address of 3 bytes (4 or 16 expected)")) {
            try XDSConversion.workload(workload)
        }
        workload.addresses = []
        workload.tunnelProtocol = .legacyIstioMtls
        #expect(throws: XDSConversion.Invalid("workload c//Pod/ns/a: tunnel protocol LEGACY_ISTIO_MTLS is not supported")) {
            try XDSConversion.workload(workload)
        }
        workload.tunnelProtocol = .hbone
        workload.services = ["ns/s": .with { $0.ports = [.with { $0.servicePort = 70_000 }] }]
        #expect(throws: XDSConversion.Invalid("workload c//Pod/ns/a service ns/s: port 70000 out of range")) {
            try XDSConversion.workload(workload)
        }
        #expect(throws: XDSConversion.Invalid("a workload without a uid")) { try XDSConversion.workload(Istio_Workload_Workload()) }

        var service = Istio_Workload_Service()
        service.namespace = "ns"
        service.hostname = "s.ns.svc"
        // A length shorter than the address is a CIDR VIP, the full length an address, a longer one an error.
        service.addresses = [.with { $0.address = Data3.v4; $0.length = 16 }, .with { $0.address = Data3.v4; $0.length = 32 }]
        let converted = try XDSConversion.service(service)
        #expect(converted.cidrVips.map(\.prefix.length) == [16])
        #expect(converted.vips.count == 1)
        service.addresses = [.with { $0.address = Data3.v4; $0.length = 33 }]
        #expect(throws: XDSConversion.Invalid("service ns/s.ns.svc: CIDR VIP length 33 is longer than the address")) {
            try XDSConversion.service(service)
        }
        // Not protobuf at all, and an Address with no kind.
        #expect(throws: XDSConversion.Invalid.self) { try XDSConversion.address([0xff, 0xff, 0xff]) }
        #expect(throws: XDSConversion.Invalid("an Address with neither a workload nor a service")) { try XDSConversion.address([]) }
    }

    /// §7.2: inside a policy, an address of the wrong length and a string match with no kind
    /// are dropped, the rest kept; a match left empty stays (the authorizer fails closed on it).
    @Test func unusablePolicyElementsAreDropped() throws {
        var match = Istio_Security_Match()
        match.sourceIps = [.with { $0.address = Data3.bytes; $0.length = 8 }, .with { $0.address = Data3.v4; $0.length = 8 }]
        match.principals = [Istio_Security_StringMatch(), .with { $0.exact = "td/ns/a/sa/b" }]
        match.destinationPorts = [70_000, 443]
        var empty = Istio_Security_Match()
        empty.principals = [Istio_Security_StringMatch()]
        var policy = Istio_Security_Authorization()
        policy.name = "p"
        policy.namespace = "ns"
        policy.rules = [.with { $0.clauses = [.with { $0.matches = [match, empty] }] }]
        let converted = try XDSConversion.policy(policy)
        let matches = try #require(converted.groups.first?.first)
        #expect(matches[0].sourceIps.map(\.description) == ["10.1.2.3/8"])  // host bits kept, as the local format does
        #expect(matches[0].principals == [.exact("td/ns/a/sa/b")] && matches[0].destinationPorts == [443])
        #expect(matches[1].isEmpty)
    }
}

/// Byte strings used above.
enum Data3 {
    static let bytes: Foundation.Data = Foundation.Data([1, 2, 3])
    static let v4: Foundation.Data = Foundation.Data([10, 1, 2, 3])
}
