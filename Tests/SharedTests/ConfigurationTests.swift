import Testing
@testable import Shared

@Suite struct ConfigurationTests {
    @Test func defaultsApply() throws {
        let configuration = try Configuration(environment: [:], arguments: [])
        #expect(configuration.int("ZTUNNEL_NET_WORKERS") == 1)
        #expect(configuration.string("ZTUNNEL_ADMIN_ADDR") == "127.0.0.1:15000")
        #expect(configuration.string("ZTUNNEL_INBOUND_ADDR") == "[::]:15008")
        #expect(configuration.drainDeadlineMilliseconds == 5000)
        #expect(!configuration.isLocalMode)
        #expect(!configuration.isSocks5Enabled)
    }

    @Test func environmentThenFlagsWin() throws {
        let configuration = try Configuration(
            environment: ["ZTUNNEL_NET_WORKERS": "3", "LOCAL_XDS_PATH": "/a.yaml", "IPV6_ENABLED": "false"],
            arguments: ["--net-workers", "4", "--audit-log=/tmp/audit"])
        #expect(configuration.int("ZTUNNEL_NET_WORKERS") == 4)
        #expect(configuration.string("ZTUNNEL_AUDIT_LOG") == "/tmp/audit")
        #expect(configuration.string("ZTUNNEL_STATS_ADDR") == "0.0.0.0:15020")
        #expect(configuration.isLocalMode && configuration.isSocks5Enabled)
    }

    @Test func badValuesNameTheSetting() {
        let cases: [([String: String], [String], String)] = [
            (["ZTUNNEL_NET_WORKERS": "abc"], [], "ZTUNNEL_NET_WORKERS"),
            ([:], ["--net-workers", "0"], "ZTUNNEL_NET_WORKERS"),
            (["ZTUNNEL_ADMIN_ADDR": "localhost"], [], "ZTUNNEL_ADMIN_ADDR"),
            (["CONNECTION_TERMINATION_DEADLINE": "soon"], [], "CONNECTION_TERMINATION_DEADLINE"),
            (["ZTUNNEL_SECCOMP_MODE": "off"], [], "ZTUNNEL_SECCOMP_MODE"),
            (["IPV6_ENABLED": "maybe"], [], "IPV6_ENABLED"),
        ]
        for (environment, arguments, setting) in cases {
            do {
                _ = try Configuration(environment: environment, arguments: arguments)
                Issue.record("accepted a bad \(setting)")
            } catch {
                #expect("\(error)".contains(setting))
                #expect(!"\(error)".contains("\n"))
            }
        }
    }

    @Test func unknownFlagsAndMissingValuesAreErrors() {
        #expect(throws: Configuration.ParseError.self) { try Configuration(environment: [:], arguments: ["--no-such-flag", "1"]) }
        #expect(throws: Configuration.ParseError.self) { try Configuration(environment: [:], arguments: ["--net-workers"]) }
    }

    @Test func drainDeadlineFollowsIstio() throws {
        func deadline(_ environment: [String: String]) throws -> Int64 {
            try Configuration(environment: environment, arguments: []).drainDeadlineMilliseconds
        }
        #expect(try deadline(["TERMINATION_GRACE_PERIOD_SECONDS": "30"]) == 25_000)
        #expect(try deadline(["TERMINATION_GRACE_PERIOD_SECONDS": "10"]) == 9_000)
        #expect(try deadline(["TERMINATION_GRACE_PERIOD_SECONDS": "1"]) == 1_000)
        #expect(try deadline(["TERMINATION_GRACE_PERIOD_SECONDS": "30", "CONNECTION_TERMINATION_DEADLINE": "2s"]) == 2_000)
    }

    @Test func helpListsEverySettingWithItsFlag() {
        let help = Configuration.helpText()
        for setting in Configuration.settings {
            #expect(help.contains(setting.name))
            #expect(help.contains(setting.flag))
        }
    }

    @Test func durationsAndAddresses() {
        #expect(Duration.parse("250ms") == 250)
        #expect(Duration.parse("5s") == 5000)
        #expect(Duration.parse("2m") == 120_000)
        #expect(Duration.parse("1h") == 3_600_000)
        #expect(Duration.parse("7") == 7000)
        #expect(Duration.parse("-1s") == nil)
        #expect(Duration.parse("s") == nil)
        #expect(SocketAddress.parse("[::1]:15000") == SocketAddress(host: "::1", port: 15000, family: .ipv6))
        #expect(SocketAddress.parse("10.0.0.1:80")?.family == .ipv4)
        #expect(SocketAddress.parse("10.0.0.1:99999") == nil)
        #expect(SocketAddress.parse("example.com:80") == nil)
    }
}

@Suite struct FormattingTests {
    @Test func rfc3339() {
        #expect(Clock.rfc3339(seconds: 0) == "1970-01-01T00:00:00Z")
        #expect(Clock.rfc3339(seconds: 951_782_400, milliseconds: 7) == "2000-02-29T00:00:00.007Z")
        #expect(Clock.rfc3339(seconds: 1_795_302_000) == "2026-11-21T23:00:00Z")
        #expect(Clock.rfc3339(seconds: 4_102_444_799) == "2099-12-31T23:59:59Z")
    }

    @Test func jsonEscapesAndKeepsOrder() {
        let value = JSON.object([("b", .string("q\"\\\n\u{1}")), ("a", .array([.int(-1), .bool(true), .null]))])
        #expect(value.serialized() == #"{"b":"q\"\\\n\u0001","a":[-1,true,null]}"#)
    }
}

@Suite struct Base64Tests {
    /// RFC 4648 §10 test vectors.
    @Test func rfc4648Vectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors { #expect(Base64.encode(Array(plain.utf8)) == encoded) }
        #expect(Base64.encode([0xff, 0xfe, 0xfd]) == "//79")
    }

    @Test func prefixedSettingsPassThroughChecked() throws {
        let configuration = try Configuration(environment: ["ISTIO_META_DNS_CAPTURE": "true", "ISTIO_METAJSON_LABELS": "{\"a\":1}",
                                                            "XDS_HEADER_X_TENANT": "blue", "ISTIO_META_CLUSTER_ID": "c1",
                                                            "CA_HEADER_X_CA": "c"], arguments: [])
        #expect(configuration.passthrough("ISTIO_META_").map(\.key) == ["DNS_CAPTURE"])  // CLUSTER_ID is a declared setting
        #expect(configuration.passthrough("ISTIO_METAJSON_").map(\.value) == ["{\"a\":1}"])
        #expect(configuration.passthrough("XDS_HEADER_").map(\.key) == ["X_TENANT"])
        #expect(configuration.passthrough("CA_HEADER_").map(\.key) == ["X_CA"])
        // A worker rebuilds them from its setup message.
        let worker = try Configuration(resolved: ["XDS_HEADER_X_TENANT": "blue"], onlyGiven: true)
        #expect(worker.passthrough("XDS_HEADER_").map(\.value) == ["blue"])
        for bad in [["XDS_HEADER_X-Y": "1"], ["ISTIO_META_A": "line\nbreak"], ["ISTIO_META_B": String(repeating: "x", count: 5000)]] {
            #expect(throws: Configuration.ParseError.self) { try Configuration(environment: bad, arguments: []) }
        }
        let many = Dictionary(uniqueKeysWithValues: (0..<65).map { ("ISTIO_META_K\($0)", "v") })
        #expect(throws: Configuration.ParseError.self) { try Configuration(environment: many, arguments: []) }
    }

    /// In a pod an unset CA_ADDRESS / XDS_ADDRESS means istiod, as upstream (so the chart's env
    /// block works unchanged); set to "" it stays off; outside Kubernetes unset means off.
    @Test func inKubernetesUnsetAddressesMeanIstiod() throws {
        let pod = try Configuration(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"], arguments: [])
        #expect(pod.string("XDS_ADDRESS") == Configuration.istiodAddress && pod.string("CA_ADDRESS") == Configuration.istiodAddress)
        let off = try Configuration(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "XDS_ADDRESS": ""], arguments: [])
        #expect(off.string("XDS_ADDRESS") == "" && off.string("CA_ADDRESS") == Configuration.istiodAddress)
        let local = try Configuration(environment: [:], arguments: [])
        #expect(local.string("XDS_ADDRESS") == "" && local.string("CA_ADDRESS") == "")
        #expect(local.string("XDS_ON_DEMAND") == "false")
        // FAKE_CA=true: the built-in CA, even over a CA_ADDRESS set or defaulted; xDS untouched.
        let fake = try Configuration(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "FAKE_CA": "true",
                                                   "CA_ADDRESS": "istiod.example:15012"], arguments: [])
        #expect(fake.string("CA_ADDRESS") == "" && fake.string("XDS_ADDRESS") == Configuration.istiodAddress)
    }

    /// A number, switch or duration set to "" is its default, never 0; an address or path set to
    /// "" stays off.
    @Test func anEmptyNumberIsItsDefault() throws {
        let configuration = try Configuration(environment: ["HTTP2_STREAM_WINDOW_SIZE": "", "KEEPALIVE_RETRIES": "", "KEEPALIVE_ENABLED": "",
                                                            "KEEPALIVE_TIME": "", "ZTUNNEL_SOCKS5_ADDR": "", "ZTUNNEL_CPU_LIMIT": ""],
                                              arguments: [])
        #expect(configuration.int("HTTP2_STREAM_WINDOW_SIZE") == 4 << 20 && configuration.int("KEEPALIVE_RETRIES") == 9)
        #expect(configuration.bool("KEEPALIVE_ENABLED") && configuration.milliseconds("KEEPALIVE_TIME") == 180_000)
        #expect(configuration.string("ZTUNNEL_SOCKS5_ADDR") == "" && configuration.string("ZTUNNEL_CPU_LIMIT") == "")
    }
}
