#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Mesh

/// The YAML-subset reader and the local configuration checks built on it.
@Suite struct LocalConfigTests {
    // MARK: - Reader: what it accepts

    @Test func exampleParsesToTheExpectedTree() throws {
        let root = try #require(try YAMLReader.parse(Fixture.example))
        #expect(root.mappingEntries?.map(\.key) == ["workloads", "services", "policies"])

        let frontend = try #require(root["workloads"]?.sequenceItems?.first)
        #expect(frontend["uid"]?.scalarText == "demo//Pod/shop/frontend-7d9f")
        #expect(frontend["workloadIps"]?.sequenceItems?.first?.content == .scalar("10.10.1.5", isQuoted: true))
        // A numeric key under a quoted key, in block style.
        let ports = frontend["services"]?["shop/frontend.shop.svc.cluster.local"]
        #expect(ports?.mappingEntries?.map(\.key) == ["80"])
        #expect(ports?["80"]?.content == .scalar("8080", isQuoted: false))

        // A flow mapping with a numeric key.
        let service = try #require(root["services"]?.sequenceItems?.last)
        #expect(service["ports"]?.mappingEntries?.first?.key == "9090")
        #expect(service["loadBalancer"]?["routingPreferences"]?.sequenceItems?.compactMap(\.scalarText) == ["Node", "Zone"])

        // rules: one group of two clauses, each clause a list of one match mapping.
        let rules = try #require(root["policies"]?.sequenceItems?.first?["rules"]?.sequenceItems)
        #expect(rules.count == 1)
        let clauses = try #require(rules.first?.sequenceItems)
        #expect(clauses.count == 2)
        let principal = try #require(clauses.first?.sequenceItems?.first?["principals"]?.sequenceItems?.first)
        #expect(principal.tag == "Exact")
        #expect(principal.scalarText == "cluster.local/ns/shop/sa/frontend")
        #expect(principal.line == 54)
        let ports2 = clauses.last?.sequenceItems?.first?["destinationPorts"]?.sequenceItems
        #expect(ports2?.compactMap(\.scalarText) == ["9090"])
    }

    @Test func exampleGivesTheWorkloads() throws {
        let config = try LocalConfig.parse(Fixture.example)
        #expect(config.workloads.map(\.uid) == ["demo//Pod/shop/frontend-7d9f", "demo//Pod/shop/cart-5c2a"])
        #expect(config.workloads.map(\.tunnelProtocol) == [.hbone, .hbone])
        let demo = try LocalConfig.parse(try Fixture.demo)
        #expect(demo.workloads.map(\.name) == ["sleep-5f7c", "curl-9a1e", "echo-6b8d"])
        #expect(demo.model.workloads.keys.sorted() == ["demo//Pod/default/curl-9a1e", "demo//Pod/default/sleep-5f7c",
                                                       "demo//Pod/shop/echo-6b8d"])
        #expect(demo.model.services.count == 1 && demo.model.policies.count == 1)
        #expect(demo.wantedIdentities(node: "").identities == ["spiffe://cluster.local/ns/default/sa/curl",
                                                               "spiffe://cluster.local/ns/default/sa/sleep",
                                                               "spiffe://cluster.local/ns/shop/sa/echo"])
    }

    @Test func jsonDocumentReadsLikeYAML() throws {
        let json = """
            {
            \t"workloads": [
            \t\t{"uid": "u", "name": "a", "namespace": "ns", "serviceAccount": "sa", "trustDomain": "td",
            \t\t "workloadIps": ["10.0.0.1", "fd00::1"], "protocol": "HBONE", "node": "n1"}
            \t],
            \t"services": [], "policies": []
            }
            """
        let yaml = """
            workloads:
            - {uid: u, name: a, namespace: ns, serviceAccount: sa, trustDomain: td, workloadIps: [10.0.0.1, "fd00::1"], protocol: HBONE, node: n1}
            """
        #expect(try LocalConfig.parse(json) == LocalConfig.parse(yaml))
        #expect(try LocalConfig.parse(json).workloads.count == 1)
    }

    @Test func emptyDocumentsAreNil() throws {
        for text in ["", "\n\n", "# only a comment\n", "---\n", "--- # marker\n# comment", "\u{FEFF}"] {
            #expect(try YAMLReader.parse(text) == nil, "\(text.debugDescription)")
        }
        #expect(try LocalConfig.parse("# nothing").workloads.isEmpty)
    }

    @Test func scalarsQuotesAndComments() throws {
        let root = try #require(try YAMLReader.parse(#"""
            ---
            plain: a b  # comment
            hash: a#b
            quoted: "# not a comment" # but this is
            escapes: "q\" b\\ s\/ n\n t\t u\u00e9 U\U0001F600 pair\ud83d\ude00 x\x41"
            single: 'it''s # here'
            empty:
            tilde: ~
            colon: http://example.com:80/x
            "quoted key": 1
            'single key': 2
            80: 3
            -1: 4
            """#))
        #expect(root["plain"]?.content == .scalar("a b", isQuoted: false))
        #expect(root["hash"]?.scalarText == "a#b")
        #expect(root["quoted"]?.content == .scalar("# not a comment", isQuoted: true))
        #expect(root["escapes"]?.scalarText == "q\" b\\ s/ n\n t\t u\u{e9} U\u{1F600} pair\u{1F600} xA")
        #expect(root["single"]?.scalarText == "it's # here")
        #expect(root["empty"]?.content == .scalar("", isQuoted: false))
        #expect(root["empty"]?.isNull == true && root["tilde"]?.isNull == true && root["single"]?.isNull == false)
        #expect(root["colon"]?.scalarText == "http://example.com:80/x")
        #expect(root.mappingEntries?.suffix(4).map(\.key) == ["quoted key", "single key", "80", "-1"])
        #expect(root["plain"]?.line == 2)
    }

    @Test func flowCollectionsAndTags() throws {
        let root = try #require(try YAMLReader.parse("""
            a: [[x, [y]], {k: {z: []}}, {}, [], "q", 1]
            b: {80: 8080, a: b, empty: , last: }
            c: [!Exact v, !Prefix "p/", !Presence [], !Suffix x]
            d: !Exact v
            e: [
              one,   # comment inside
              two,
            ]
            """))
        let a = try #require(root["a"]?.sequenceItems)
        #expect(a.count == 6)
        #expect(a[0].sequenceItems?.last?.sequenceItems?.first?.scalarText == "y")
        #expect(a[1]["k"]?["z"]?.sequenceItems == [])
        #expect(a[2].mappingEntries?.isEmpty == true && a[3].sequenceItems?.isEmpty == true)
        #expect(a[4].content == .scalar("q", isQuoted: true) && a[5].content == .scalar("1", isQuoted: false))
        #expect(root["b"]?.mappingEntries?.map(\.key) == ["80", "a", "empty", "last"])
        #expect(root["b"]?["80"]?.scalarText == "8080")
        #expect(root["b"]?["empty"]?.isNull == true && root["b"]?["last"]?.isNull == true)
        let c = try #require(root["c"]?.sequenceItems)
        #expect(c.map(\.tag) == ["Exact", "Prefix", "Presence", "Suffix"])
        #expect(c[1].content == .scalar("p/", isQuoted: true))
        #expect(c[2].sequenceItems == [])
        #expect(root["d"]?.tag == "Exact" && root["d"]?.scalarText == "v")
        #expect(root["e"]?.sequenceItems?.compactMap(\.scalarText) == ["one", "two"])
    }

    @Test func blockLayouts() throws {
        let root = try #require(try YAMLReader.parse("""
            top:
            - a
            -
              - b
            - - c
              - d
            - k: 1
              l: 2
            -
            after:
              value
            nested:
              deeper:
                deepest: x
              back: y
            """))
        let top = try #require(root["top"]?.sequenceItems)
        #expect(top.count == 5)
        #expect(top[1].sequenceItems?.first?.scalarText == "b")
        #expect(top[2].sequenceItems?.compactMap(\.scalarText) == ["c", "d"])
        #expect(top[3].mappingEntries?.map(\.key) == ["k", "l"])
        #expect(top[4].isNull)
        #expect(root["after"]?.scalarText == "value")
        #expect(root["nested"]?["deeper"]?["deepest"]?.scalarText == "x")
        #expect(root["nested"]?["back"]?.scalarText == "y")
        #expect(try YAMLReader.parse("a: 1\r\nb: 2\r\n")?.mappingEntries?.map(\.key) == ["a", "b"])
    }

    // MARK: - Reader: what it refuses

    @Test func refusals() {
        let cases: [(String, String)] = [
            ("a: &x 1", "anchors"),
            ("a: *x", "aliases"),
            ("- &x a", "anchors"),
            ("a: |\n  text", "block scalars"),
            ("a: >\n  text", "block scalars"),
            ("? a\n: b", "complex keys"),
            ("[a]: b", "complex keys"),
            ("{a: 1}: b", "complex keys"),
            ("{[a]: b}", "complex keys"),
            ("%YAML 1.2\n---\na: 1", "directives"),
            ("a: 1\n---\nb: 2", "multiple documents"),
            ("---\n---\n", "multiple documents"),
            ("a: 1\n...\n", "document end"),
            ("--- a: 1", "'---' line"),
            ("a: 1\na: 2", "duplicate key \"a\""),
            ("{a: 1, \"a\": 2}", "duplicate key"),
            ("- {80: 1, '80': 2}", "duplicate key"),
            ("a:\n\tb: 1", "tabs"),
            ("-\ta", "tabs"),
            ("a: \"\\q\"", "unknown escape '\\q'"),
            ("a: \"\\ud800\"", "surrogate"),
            ("a: \"\\udc00\"", "invalid Unicode"),
            ("a: \"\\u12\"", "hexadecimal"),
            ("a: \"open", "must end on the line"),
            ("a: 'open\n  more'", "must end on the line"),
            ("a: \"x\\\n  y\"", "must end on the line"),
            ("a: [b, c", "never closed"),
            ("a: [b}", "to close"),
            ("a: [b c, d]\nb: [b\n c]", "expected ','"),
            ("a: {b}", "expected ':'"),
            ("a: [b: c]", "flow sequence"),
            ("a: [,]", "expected a value"),
            ("a: [b,,]", "expected a value"),
            ("a: b: c", "on the line of its key"),
            ("a: - b", "on the line of its key"),
            ("a: 1\n  b: 2", "unexpected indentation"),
            ("- a\n  b", "multi-line scalars"),
            ("a: b\n  c", "multi-line scalars"),
            ("a:\n    b: 1\n  c: 2", "bad indentation"),
            ("- a\nb: c", "expected a sequence entry"),
            ("a: 1\n- b", "expected a mapping key"),
            ("a\nb", "after the end of the document's root"),
            ("!Exact a: b", "tags on keys"),
            ("{!Exact a: b}", "tags on keys"),
            ("a: !!str b", "unsupported tag"),
            ("a: !<x> b", "unsupported tag"),
            ("a: !Exact", "followed by a value"),
            ("a: !Exact # c", "followed by a value"),
            ("a: !A !B c", "one tag"),
            ("a: @x", "reserved"),
            ("a: `x", "reserved"),
            ("a: %x", "directives"),
            ("a: [x,#c\n]", "comment"),
            (": b", "key is missing"),
            ("a: \u{1}", "control characters"),
            ("a: \u{7F}", "control characters"),
            ("a: \u{85}", "control characters"),
            ("a: 1\rb: 2", "carriage return"),
            ("[\n---\n]", "document marker"),
            ("\"a\":b", "after the value"),
        ]
        for (text, reason) in cases {
            #expect(throws: YAMLError.self, "\(text.debugDescription)") { try YAMLReader.parse(text) }
            do {
                _ = try YAMLReader.parse(text)
            } catch let error as YAMLError {
                #expect(error.reason.contains(reason), "\(text.debugDescription): \(error)")
            } catch {
                Issue.record("\(text.debugDescription): unexpected \(error)")
            }
        }
    }

    @Test func errorsGiveTheLine() throws {
        let error = try #require(throws: YAMLError.self) { try YAMLReader.parse("a: 1\nb: 2\n# c\nb: 3\n") }
        #expect(error.line == 4)
        #expect(error.description == "line 4: duplicate key \"b\"")
    }

    @Test func depthLimit() throws {
        let limit = YAMLReader.maximumDepth
        #expect(try YAMLReader.parse(String(repeating: "[", count: limit) + String(repeating: "]", count: limit)) != nil)
        #expect(throws: YAMLError.self) {
            try YAMLReader.parse(String(repeating: "[", count: limit + 1) + String(repeating: "]", count: limit + 1))
        }
        #expect(throws: YAMLError.self) { try YAMLReader.parse(String(repeating: "[", count: 100_000)) }

        func blockMappings(_ depth: Int) -> String {
            (0..<depth).map { String(repeating: " ", count: $0) + "k:" }.joined(separator: "\n") + " v"
        }
        #expect(try YAMLReader.parse(blockMappings(limit)) != nil)
        #expect(throws: YAMLError.self) { try YAMLReader.parse(blockMappings(limit + 1)) }

        let dashes = String(repeating: "- ", count: limit) + "x"
        #expect(try YAMLReader.parse(dashes) != nil)
        #expect(throws: YAMLError.self) { try YAMLReader.parse("- " + dashes) }

        // Block and flow levels add up: 63 block levels leave room for one flow level.
        let mixed = String(repeating: "- ", count: limit - 1)
        #expect(try YAMLReader.parse(mixed + "[x]") != nil)
        #expect(throws: YAMLError.self) { try YAMLReader.parse(mixed + "[[x]]") }
    }

    @Test func sizeLimit() throws {
        let line = "- 0123456789abcdef\n"
        let fits = String(repeating: line, count: YAMLReader.maximumBytes / line.utf8.count)
        #expect(try YAMLReader.parse(fits)?.sequenceItems?.count == fits.utf8.count / line.utf8.count)
        let tooBig = String(repeating: "#", count: YAMLReader.maximumBytes + 1)
        #expect(throws: YAMLError.self) { try YAMLReader.parse(tooBig) }
    }

    @Test func pathologicalInputsEndQuickly() throws {
        let inputs = [
            String(repeating: "a", count: 1 << 19) + ": b",
            "a: " + String(repeating: "b ", count: 1 << 18),
            "[" + String(repeating: "a, ", count: 1 << 17) + "]",
            String(repeating: "{a: ", count: 64) + String(repeating: "}", count: 64),
            String(repeating: " ", count: 1 << 19) + "x",
            String(repeating: "- ", count: 64) + String(repeating: "x", count: 1 << 19),
            "a: \"" + String(repeating: "\\u00e9", count: 1 << 16) + "\"",
        ]
        for text in inputs {
            _ = try? YAMLReader.parse(text)  // Accepted or refused, but it returns.
        }
    }

    // MARK: - Local configuration checks

    @Test func localConfigRefusals() {
        let base = "workloads:\n- namespace: ns\n  workloadIps: [10.0.0.1]\n"
        let cases: [(String, String)] = [
            ("- a", "the top level must be a mapping, got a sequence"),
            ("just text", "the top level must be a mapping"),
            ("workload: []", "unknown top-level key \"workload\""),
            ("workloads: {}", "workloads: expected a sequence, got a mapping"),
            ("services:", "services: expected a sequence, got null"),
            ("policies: x", "policies: expected a sequence"),
            ("workloads: [x]", "workloads[0]: expected a mapping, got a scalar"),
            (base + "- namespace: ns\n  workloadIps: []\n  colour: red", "workloads[1]: unknown key \"colour\""),
            (base + "  protocol: x", #"workloads[0].protocol: expected HBONE or TCP, got "x""#),
            (base + "  protocol: hbone", "workloads[0].protocol: expected HBONE or TCP"),
            ("workloads:\n- workloadIps: []", "workloads[0].namespace: required"),
            ("workloads:\n- namespace: ns", "workloads[0].workloadIps: required"),
            ("workloads:\n- namespace: ns\n  workloadIps: 10.0.0.1", "workloads[0].workloadIps: expected a sequence"),
            ("workloads:\n- namespace: ns\n  workloadIps: [10.0.0.256]", "workloads[0].workloadIps[0]: expected an IPv4 or IPv6"),
            ("workloads:\n- namespace: ns\n  workloadIps: [[1]]", "workloads[0].workloadIps[0]: expected a string"),
            ("workloads:\n- namespace: Shop\n  workloadIps: []", "workloads[0].namespace: expected at most 63"),
            ("workloads:\n- namespace: a/b\n  workloadIps: []", "workloads[0].namespace"),
            ("workloads:\n- namespace: ..\n  workloadIps: []", "workloads[0].namespace"),
            ("workloads:\n- namespace: \"\"\n  workloadIps: []", "workloads[0].namespace: must not be empty"),
            ("workloads:\n- namespace: -ns\n  workloadIps: []", "workloads[0].namespace"),
            ("workloads:\n- namespace: " + String(repeating: "a", count: 64) + "\n  workloadIps: []", "namespace"),
            (base + "  serviceAccount: \"\"", "workloads[0].serviceAccount: must not be empty"),
            (base + "  serviceAccount:", "workloads[0].serviceAccount: expected a string, got null"),
            (base + "  serviceAccount: null", "workloads[0].serviceAccount: expected a string, got null"),
            (base + "  serviceAccount: a_b", "workloads[0].serviceAccount"),
            (base + "  trustDomain: a/b", "workloads[0].trustDomain"),
            (base + "  trustDomain: !Exact a", "workloads[0].trustDomain: expected a string, got a tagged value"),
            (base + "  name: \"a\\nb\"", "workloads[0].name: control or format characters"),
            (base + "  node: \"a\\u0085b\"", "workloads[0].node: control or format characters"),
            (base + "  uid: \"a\\u202eb\"", "workloads[0].uid: control or format characters"),
            (base + "  node: [a]", "workloads[0].node: expected a string"),
            (base + "  services: []", "workloads[0].services: expected a mapping"),
            (base + "  authorizationPolicies: [[a]]", "workloads[0].authorizationPolicies[0]: expected a string"),
            ("workloads: [\n", "LOCAL_XDS_PATH: line 1: flow collection never closed"),
        ]
        for (text, message) in cases {
            do {
                _ = try LocalConfig.parse(text)
                Issue.record("\(text.debugDescription) was accepted")
            } catch let error as LocalConfig.ParseError {
                #expect(error.description.hasPrefix("LOCAL_XDS_PATH: "))
                #expect(error.description.contains(message), "\(text.debugDescription): \(error)")
            } catch {
                Issue.record("\(text.debugDescription): unexpected \(error)")
            }
        }
    }

    @Test func localConfigAcceptsKnownShapes() throws {
        let config = try LocalConfig.parse("""
            workloads:
            - namespace: ns
              workloadIps: []
              trustDomain: my_domain.example
              serviceAccount: sa.v1-2
            - namespace: ns2
              workloadIps: ["::", "::1", "fd00::10:1", "::ffff:10.0.0.1", "1:2:3:4:5:6:7:8", 192.168.0.1]
              protocol: TCP
              waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
              capacity: 1
            """)
        #expect(config.workloads.map(\.tunnelProtocol) == [.none, .none])
        #expect(config.workloads.first?.trustDomain == "my_domain.example")
    }

    @Test func wantedIdentitiesFilterByNodeAndProtocol() throws {
        let config = try LocalConfig.parse("""
            workloads:
            - {name: a, namespace: ns, serviceAccount: sa, trustDomain: td, workloadIps: [], protocol: HBONE, node: n1}
            - {name: b, namespace: ns, serviceAccount: sa, trustDomain: td, workloadIps: [], protocol: HBONE, node: n1}
            - {name: c, namespace: ns, serviceAccount: other, trustDomain: td, workloadIps: [], protocol: HBONE, node: n2}
            - {name: d, namespace: ns, serviceAccount: tcp, trustDomain: td, workloadIps: [], protocol: TCP, node: n1}
            - {name: e, namespace: ns, serviceAccount: notd, workloadIps: [], protocol: HBONE, node: n1}
            - {namespace: ns, workloadIps: [], protocol: HBONE, node: n2}
            - {name: g, namespace: ns, serviceAccount: default, trustDomain: td, workloadIps: []}
            """)
        let all = config.wantedIdentities(node: "")
        #expect(all.identities == ["spiffe://td/ns/ns/sa/other", "spiffe://td/ns/ns/sa/sa"])
        #expect(all.skipped == [
            #"workloads[4] "ns/e" has no trustDomain, so it gets no certificate"#,
            #"workloads[5] "ns/(unnamed)" has no trustDomain or serviceAccount, so it gets no certificate"#,
        ])
        let n1 = config.wantedIdentities(node: "n1")
        #expect(n1.identities == ["spiffe://td/ns/ns/sa/sa"])
        #expect(n1.skipped.count == 1)
        #expect(config.wantedIdentities(node: "n3") == ([], []))
    }

    @Test func ipLiterals() {
        for good in ["0.0.0.0", "10.10.1.5", "255.255.255.255", "::", "::1", "1::", "fe80::1", "2001:db8::8:800:200c:417a",
                     "1:2:3:4:5:6:7:8", "1:2:3:4:5:6::", "::ffff:192.0.2.1", "1:2:3:4:5:6:1.2.3.4", "ABCD::ef"] {
            #expect(IPAddress(good) != nil, "\(good)")
        }
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.1.1.1", "1..2.3", "1.2.3.4.", " 1.2.3.4", "a.b.c.d",
                    ":", ":::", "1:2", "1::2::3", ":1::", "1:2:3:4:5:6:7:8:9", "1::2:3:4:5:6:7:8", "12345::", "g::",
                    "::1%eth0", "[::1]", "10.0.0.0/8", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3", "1.2.3.4::"] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
    }

    // MARK: - The mesh model

    func ip(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }
    func at(_ network: String, _ text: String) throws -> NetworkAddress { NetworkAddress(network: network, ip: try ip(text)) }
    func prefix(_ text: String) throws -> IPPrefix { try #require(IPPrefix(text)) }

    @Test func exampleModelWorkloads() throws {
        let model = try LocalConfig.parse(Fixture.example).model
        #expect(model.workloads.keys.sorted() == ["demo//Pod/shop/cart-5c2a", "demo//Pod/shop/frontend-7d9f"])
        var frontend = Workload(uid: "demo//Pod/shop/frontend-7d9f", name: "frontend-7d9f", namespace: "shop",
                                addresses: [try ip("10.10.1.5")], tunnelProtocol: .hbone, trustDomain: "cluster.local",
                                serviceAccount: "frontend", node: "node-a", canonicalName: "frontend", canonicalRevision: "v2",
                                workloadType: .deployment, workloadName: "frontend", clusterId: "demo")
        frontend.services = ["shop/frontend.shop.svc.cluster.local": [80: 8080]]
        #expect(model.workloads[frontend.uid] == frontend)
        let cart = try #require(model.workload(at: try at("", "10.10.2.9")))
        #expect(cart.uid == "demo//Pod/shop/cart-5c2a" && cart.node == "node-b" && cart.serviceAccount == "cart")
        #expect(cart.authorizationPolicies == ["shop/cart-only-frontend"])
        #expect(cart.services == ["shop/cart.shop.svc.cluster.local": [9090: 9090]])
        #expect(cart.identity == "spiffe://cluster.local/ns/shop/sa/cart")
        #expect(cart.capacity == 1 && cart.status == .healthy && cart.networkMode == .standard && cart.waypoint == nil)
        #expect(model.workload(at: try at("", "10.10.1.5"))?.uid == frontend.uid)
        #expect(model.workload(at: try at("other", "10.10.1.5")) == nil)
        #expect(model.workload(at: try at("", "10.10.9.9")) == nil)
    }

    @Test func exampleModelServices() throws {
        let model = try LocalConfig.parse(Fixture.example).model
        #expect(model.services.keys.sorted() == ["shop/cart.shop.svc.cluster.local", "shop/frontend.shop.svc.cluster.local"])
        let cart = try #require(model.services(at: try at("", "10.96.10.2")).first)
        #expect(cart == Service(name: "cart", namespace: "shop", hostname: "cart.shop.svc.cluster.local",
                                vips: [try at("", "10.96.10.2")], ports: [9090: 9090],
                                loadBalancer: .init(routingPreferences: [.node, .zone], mode: .failover, healthPolicy: .onlyHealthy)))
        let frontend = try #require(model.services(at: try at("", "10.96.10.1")).first)
        #expect(frontend.ports == [80: 8080] && frontend.loadBalancer == nil && frontend.visibility == .public)
        #expect(model.services(at: try at("", "10.96.10.3")).isEmpty)
        let endpoints = model.endpoints(of: cart.key)
        #expect(endpoints.map(\.workload.uid) == ["demo//Pod/shop/cart-5c2a"])
        #expect(endpoints.map(\.ports) == [[9090: 9090]])
        #expect(model.endpoints(of: frontend.key).map(\.workload.uid) == ["demo//Pod/shop/frontend-7d9f"])
        #expect(model.stagedServices.isEmpty)
    }

    @Test func exampleModelPolicies() throws {
        let model = try LocalConfig.parse(Fixture.example).model
        #expect(model.policies["shop/cart-only-frontend"] == Policy(
            name: "cart-only-frontend", namespace: "shop", scope: .workloadSelector, action: .allow,
            groups: [[[Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])], [Match(destinationPorts: [9090])]]],
            dryRun: false))
        #expect(model.policies["shop/no-legacy-net"] == Policy(
            name: "no-legacy-net", namespace: "shop", scope: .namespace, action: .deny,
            groups: [[[Match(sourceIps: [try prefix("192.168.0.0/16")])]]], dryRun: false))
    }

    @Test func policiesForTheExampleWorkloads() throws {
        let model = try LocalConfig.parse(Fixture.example).model
        let cart = try #require(model.workloads["demo//Pod/shop/cart-5c2a"])
        let frontend = try #require(model.workloads["demo//Pod/shop/frontend-7d9f"])
        #expect(model.policies(for: cart).policies.map(\.key) == ["shop/cart-only-frontend", "shop/no-legacy-net"])
        #expect(model.policies(for: cart).unknown.isEmpty)
        #expect(model.policies(for: frontend).policies.map(\.key) == ["shop/no-legacy-net"])
        var stranger = Workload(uid: "x", namespace: "elsewhere")
        stranger.authorizationPolicies = ["shop/cart-only-frontend", "shop/missing"]
        #expect(model.policies(for: stranger).policies.map(\.key) == ["shop/cart-only-frontend"])
        #expect(model.policies(for: stranger).unknown == ["shop/missing"])

        // The example's intent, end to end: frontend may reach cart on 9090 only, legacy addresses never.
        func decide(_ identity: String, from source: String, port: UInt16) throws -> Bool {
            let connection = Authorizer.Connection(sourceIdentity: identity, sourceIP: try ip(source),
                                                   destinationIP: try ip("10.10.2.9"), destinationPort: port)
            return Authorizer.decide(model.policies(for: cart).policies, for: connection).isAllowed
        }
        let frontendID = "spiffe://cluster.local/ns/shop/sa/frontend"
        #expect(try decide(frontendID, from: "10.10.1.5", port: 9090))
        #expect(try !decide(frontendID, from: "10.10.1.5", port: 9091))
        #expect(try !decide("spiffe://cluster.local/ns/shop/sa/other", from: "10.10.1.5", port: 9090))
        #expect(try !decide(frontendID, from: "192.168.1.1", port: 9090))
    }

    @Test func everyFieldReachesTheModel() throws {
        let config = try LocalConfig.parse(Fixture.everyField)
        let model = config.model
        var first = Workload(uid: "demo//Pod/shop/frontend-7d9f", name: "frontend-7d9f", namespace: "shop",
                             addresses: [try ip("10.10.1.5"), try ip("fd00::5")], hostname: "frontend.example.com",
                             network: "net-a", tunnelProtocol: .hbone, trustDomain: "cluster.local", serviceAccount: "frontend",
                             waypoint: GatewayAddress(destination: .hostname(namespace: "shop", hostname: "waypoint.shop.svc.cluster.local"),
                                                      hboneMtlsPort: 15008),
                             networkGateway: GatewayAddress(destination: .address(network: "net-b", ip: try ip("192.0.2.10")),
                                                            hboneMtlsPort: 15009),
                             node: "node-a", canonicalName: "frontend", canonicalRevision: "v2", workloadType: .pod,
                             workloadName: "frontend", nativeTunnel: true, status: .unhealthy, clusterId: "demo",
                             networkMode: .hostNetwork, capacity: UInt32.max)
        first.services = ["shop/frontend.shop.svc.cluster.local": [80: 8080, 443: 0]]
        first.authorizationPolicies = ["shop/only-frontend"]
        first.applicationTunnel = ApplicationTunnel(tunnelProtocol: .proxy, port: 15088)
        first.locality = Locality(region: "eu", zone: "eu-1", subzone: "rack-3")
        #expect(config.workloads.first == first)
        #expect(config.workloads.last == Workload(uid: "local/shop/workloads[1]", namespace: "shop"))
        // HostNetwork workloads are not indexed by address.
        #expect(model.workloadByAddress.isEmpty)

        let service = Service(
            name: "frontend", namespace: "shop", hostname: "frontend.shop.svc.cluster.local",
            vips: [try at("", "10.96.10.1"), try at("net-a", "fd00:96::1")], ports: [80: 8080, 443: 0],
            subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/frontend"],
            waypoint: GatewayAddress(destination: .address(network: "", ip: try ip("10.0.0.9")), hboneMtlsPort: 15008),
            loadBalancer: .init(routingPreferences: [.region, .zone, .subzone, .node, .cluster, .network], mode: .strict,
                                healthPolicy: .allowAll),
            ipFamilies: .dual, canonical: true, visibility: .namespace)
        #expect(model.services[service.key] == service)
        #expect(model.services(at: try at("net-a", "fd00:96::1")) == [service])

        let match = Match(
            namespaces: [.exact("shop")], notNamespaces: [.prefix("kube-")], principals: [.suffix("/sa/frontend"), .presence],
            notPrincipals: [.exact("cluster.local/ns/shop/sa/evil")], sourceIps: [try prefix("10.0.0.0/8")],
            notSourceIps: [try prefix("fd00::/8")], destinationIps: [try prefix("10.10.1.5/32")],
            notDestinationIps: [try prefix("0.0.0.0/0")], destinationPorts: [8080, 65535], notDestinationPorts: [0],
            serviceAccounts: [ServiceAccountMatch(namespace: "shop", serviceAccount: "frontend")],
            notServiceAccounts: [ServiceAccountMatch(namespace: "shop", serviceAccount: "evil")])
        #expect(model.policies["shop/only-frontend"] == Policy(
            name: "only-frontend", namespace: "shop", scope: .workloadSelector, action: .allow,
            groups: [[[match], [Match()]], []], dryRun: true))
        #expect(model.policies["istio-system/istio_converted_static_strict"] == Policy(
            name: "istio_converted_static_strict", namespace: "istio-system", scope: .global, action: .deny, groups: []))
    }

    @Test func otherSpellingsAreAccepted() throws {
        let config = try LocalConfig.parse("""
            {"workloads": [{"namespace": "ns", "workloadIps": ["10.0.0.1"], "nativeTunnel": TRUE, "capacity": 0,
                            "services": {"ns/s.ns": {"80": 8080}}, "applicationTunnel": {"protocol": "NONE", "port": 0},
                            "waypoint": {"destination": "ns/w.ns", "hboneMtlsPort": 0}}],
             "services": [{"name": "s", "namespace": "ns", "hostname": "s.ns", "vips": [], "ports": {"0": 0},
                           "ipFamilies": "IPv6", "canonical": false, "visibility": "Public", "loadBalancer": {}}],
             "policies": [{"name": "p", "namespace": "ns", "scope": "Namespace", "action": "Deny", "dryRun": False,
                           "rules": [[[{"principals": [!Exact "", !Presence []], "sourceIps": ["10.1.2.3/8"]}]]]}]}
            """)
        let workload = try #require(config.workloads.first)
        #expect(workload.nativeTunnel && workload.capacity == 0 && workload.services == ["ns/s.ns": [80: 8080]])
        #expect(workload.applicationTunnel == ApplicationTunnel(tunnelProtocol: .none, port: nil))
        #expect(workload.waypoint?.text == "ns/w.ns" && workload.waypoint?.hboneMtlsPort == 0)
        let service = try #require(config.model.services["ns/s.ns"])
        #expect(service.ports == [0: 0] && service.ipFamilies == .ipv6Only && service.loadBalancer == Service.LoadBalancer())
        let match = try #require(config.model.policies["ns/p"]?.groups.first?.first?.first)
        #expect(match.principals == [.exact(""), .presence])
        #expect(match.sourceIps.map(\.description) == ["10.1.2.3/8"])
    }

    @Test func uidsAreDerivedWhenAbsent() throws {
        let config = try LocalConfig.parse("""
            workloads:
            - {namespace: ns, name: a, hostname: h.example, workloadIps: [10.0.0.1]}
            - {namespace: ns, hostname: h.example, workloadIps: [10.0.0.1]}
            - {namespace: ns, workloadIps: ["fd00::1", 10.0.0.2]}
            - {namespace: ns, workloadIps: []}
            - {namespace: ns, workloadIps: [], uid: explicit}
            """)
        #expect(config.workloads.map(\.uid) == ["local/ns/a", "local/ns/h.example", "local/ns/fd00::1", "local/ns/workloads[3]",
                                                 "explicit"])
        #expect(config.model.workloads.count == 5)
        // An explicit uid that equals a derived one is a duplicate like any other.
        #expect(throws: LocalConfig.ParseError.self) {
            try LocalConfig.parse("workloads:\n- {namespace: ns, name: a, workloadIps: []}\n- {namespace: ns, uid: local/ns/a, workloadIps: []}")
        }
    }

    @Test func duplicatesAreRefused() {
        let service = "{name: s, namespace: ns, hostname: h.ns, vips: [], ports: {}}"
        let policy = "{name: p, namespace: ns, scope: Global, action: Allow, dryRun: false, rules: []}"
        let cases: [(String, String)] = [
            ("workloads:\n- {uid: u, namespace: a, workloadIps: []}\n- {uid: u, namespace: b, workloadIps: []}",
             #"workloads[1]: duplicate uid "u", also used by workloads[0] (line 3)"#),
            ("workloads:\n- {name: a, namespace: ns, workloadIps: []}\n- {name: b, namespace: ns, workloadIps: []}\n"
                + "- {name: a, namespace: ns, workloadIps: [10.0.0.1]}",
             #"workloads[2]: duplicate uid "local/ns/a", also used by workloads[0]"#),
            ("services:\n- \(service)\n- {name: t, namespace: ns, hostname: h.ns, vips: [], ports: {}}",
             #"services[1]: duplicate service "ns/h.ns" (namespace/hostname), also used by services[0] (line 3)"#),
            ("policies:\n- \(policy)\n- {name: p, namespace: ns, scope: Namespace, action: Deny, dryRun: true, rules: []}",
             #"policies[1]: duplicate policy "ns/p" (namespace/name), also used by policies[0] (line 3)"#),
        ]
        expectRefusals(cases)
        // The same name in another namespace, or the same hostname in another namespace, is fine.
        #expect(throws: Never.self) {
            try LocalConfig.parse("services:\n- \(service)\n- {name: s, namespace: other, hostname: h.ns, vips: [], ports: {}}\n"
                                  + "policies:\n- \(policy)\n- {name: p, namespace: other, scope: Global, action: Allow, dryRun: false, rules: []}")
        }
    }

    @Test func workloadFieldRefusals() {
        let w = "workloads:\n- namespace: ns\n  workloadIps: [10.0.0.1]\n"
        expectRefusals([
            (w + "  capacity: -1", #"LOCAL_XDS_PATH: workloads[0].capacity: expected an integer from 0 to 4294967295, got "-1" (line 4)"#),
            (w + "  capacity: 4294967296", #"workloads[0].capacity: expected an integer from 0 to 4294967295, got "4294967296""#),
            (w + "  capacity: \"2\"", #"workloads[0].capacity: expected an integer from 0 to 4294967295, got the quoted string "2""#),
            (w + "  capacity: 0x10", "workloads[0].capacity: expected an integer"),
            (w + "  capacity: 010", "workloads[0].capacity: expected an integer"),
            (w + "  capacity: 1.5", "workloads[0].capacity: expected an integer"),
            (w + "  capacity:", "workloads[0].capacity: expected an integer from 0 to 4294967295, got null"),
            (w + "  workloadType: Deployment", #"workloads[0].workloadType: expected deployment, cronjob, pod or job, got "Deployment""#),
            (w + "  status: healthy", #"workloads[0].status: expected Healthy or Unhealthy, got "healthy""#),
            (w + "  networkMode: Host", "workloads[0].networkMode: expected Standard or HostNetwork"),
            (w + "  protocol: LEGACY_ISTIO_MTLS", "workloads[0].protocol: expected HBONE or TCP"),
            (w + "  nativeTunnel: yes", #"workloads[0].nativeTunnel: expected true or false, got "yes""#),
            (w + "  nativeTunnel: \"true\"", "workloads[0].nativeTunnel: expected true or false, got the quoted string"),
            (w + "  uid: \"\"", "workloads[0].uid: must not be empty"),
            (w + "  hostname: a b", "workloads[0].hostname: expected a hostname"),
            (w + "  hostname: a/b", "workloads[0].hostname: expected a hostname"),
            (w + "  network: a/b", "workloads[0].network: a network name cannot contain '/'"),
            ("workloads:\n- {namespace: ns, workloadIps: [10.0.0.0/8]}", #"workloads[0].workloadIps[0]: expected an IPv4 or IPv6 address, got "10.0.0.0/8""#),
            (w + "  waypoint: {destination: /10.0.0.1}", "workloads[0].waypoint.hboneMtlsPort: required (line 4)"),
            (w + "  waypoint: {hboneMtlsPort: 15008}", "workloads[0].waypoint.destination: required"),
            (w + "  waypoint: {destination: x, hboneMtlsPort: 1}", #"workloads[0].waypoint.destination: expected "network/ip" or "namespace/hostname", got "x""#),
            (w + "  waypoint: {destination: Shop/x, hboneMtlsPort: 1}", "workloads[0].waypoint.destination: expected"),
            (w + "  waypoint: {destination: /10.0.0.1, hboneMtlsPort: 65536}", #"workloads[0].waypoint.hboneMtlsPort: expected an integer from 0 to 65535, got "65536""#),
            (w + "  waypoint: {destination: /10.0.0.1, hboneMtlsPort: 1, port: 2}", #"workloads[0].waypoint: unknown key "port""#),
            (w + "  networkGateway: /10.0.0.1", "workloads[0].networkGateway: expected a mapping, got a scalar"),
            (w + "  services: {shop: {80: 80}}", #"workloads[0].services: expected "namespace/hostname" as the key, got "shop""#),
            (w + "  services: {\"shop/a.b\": {80: 70000}}", #"workloads[0].services["shop/a.b"].80: expected an integer from 0 to 65535, got "70000""#),
            (w + "  services: {\"shop/a.b\": {http: 80}}", #"workloads[0].services["shop/a.b"]: expected a port from 0 to 65535 as the key, got "http""#),
            (w + "  services: {\"shop/a.b\": [80]}", #"workloads[0].services["shop/a.b"]: expected a mapping, got a sequence"#),
            (w + "  authorizationPolicies: [nonamespace]", #"workloads[0].authorizationPolicies[0]: expected "namespace/name", got "nonamespace""#),
            (w + "  authorizationPolicies: [a/b/c]", "workloads[0].authorizationPolicies[0]: expected \"namespace/name\""),
            (w + "  applicationTunnel: {protocol: HTTP}", #"workloads[0].applicationTunnel.protocol: expected NONE or PROXY, got "HTTP""#),
            (w + "  applicationTunnel: {port: 1}", "workloads[0].applicationTunnel.protocol: required"),
            (w + "  locality: {region: a, country: b}", #"workloads[0].locality: unknown key "country""#),
            (w + "  locality: [a]", "workloads[0].locality: expected a mapping"),
            (w + "  extensions: []", #"workloads[0]: unknown key "extensions""#),
        ])
    }

    @Test func serviceFieldRefusals() {
        func service(_ fields: String) -> String { "services:\n- {" + fields + "}" }
        let base = "name: s, namespace: ns, hostname: s.ns, vips: [], ports: {}"
        expectRefusals([
            (service("namespace: ns, hostname: h, vips: [], ports: {}"), "services[0].name: required (line 2)"),
            (service("name: s, hostname: h, vips: [], ports: {}"), "services[0].namespace: required"),
            (service("name: s, namespace: ns, vips: [], ports: {}"), "services[0].hostname: required"),
            (service("name: s, namespace: ns, hostname: h, ports: {}"), "services[0].vips: required"),
            (service("name: s, namespace: ns, hostname: h, vips: []"), "services[0].ports: required"),
            (service(base + ", endpoints: {}"), #"services[0]: unknown key "endpoints""#),
            (service(base + ", weightedWaypoints: []"), #"services[0]: unknown key "weightedWaypoints""#),
            (service("name: s, namespace: ns, hostname: \"a b\", vips: [], ports: {}"), "services[0].hostname: expected a hostname"),
            (service("name: S, namespace: ns, hostname: h, vips: [], ports: {}"), "services[0].name: expected at most 253"),
            (service("name: s, namespace: ns, hostname: h, vips: [10.96.0.1], ports: {}"),
             #"services[0].vips[0]: expected "network/ip" or "network/ip/length" (the network may be empty, as in "/10.96.0.10"), got "10.96.0.1""#),
            (service("name: s, namespace: ns, hostname: h, vips: [/10.96.0.300], ports: {}"), "services[0].vips[0]: expected \"network/ip\""),
            (service("name: s, namespace: ns, hostname: h, vips: [/10.96.0.0/33], ports: {}"),
             #"services[0].vips[0]: bad CIDR VIP length in "/10.96.0.0/33""#),
            (service("name: s, namespace: ns, hostname: h, vips: [], ports: {80: 65536}"), #"services[0].ports.80: expected an integer from 0 to 65535, got "65536""#),
            (service("name: s, namespace: ns, hostname: h, vips: [], ports: {65536: 80}"), #"services[0].ports: expected a port from 0 to 65535 as the key, got "65536""#),
            (service("name: s, namespace: ns, hostname: h, vips: [], ports: {\"080\": 80}"), "services[0].ports: expected a port"),
            (service("name: s, namespace: ns, hostname: h, vips: [], ports: {80: \"80\"}"), "services[0].ports.80: expected an integer"),
            (service("name: s, namespace: ns, hostname: h, vips: [], ports: [80]"), "services[0].ports: expected a mapping, got a sequence"),
            (service(base + ", subjectAltNames: [\"\"]"), "services[0].subjectAltNames[0]: must not be empty"),
            (service(base + ", waypoint: {destination: \"\", hboneMtlsPort: 1}"), "services[0].waypoint.destination: expected"),
            (service(base + ", loadBalancer: {mode: Random}"), #"services[0].loadBalancer.mode: expected Standard, Strict, Failover or Passthrough, got "Random""#),
            (service(base + ", loadBalancer: {routingPreferences: [Zone, Planet]}"),
             #"services[0].loadBalancer.routingPreferences[1]: expected Region, Zone, Subzone, Node, Cluster or Network, got "Planet""#),
            (service(base + ", loadBalancer: {healthPolicy: Any}"), "services[0].loadBalancer.healthPolicy: expected OnlyHealthy or AllowAll"),
            (service(base + ", loadBalancer: {weight: 1}"), #"services[0].loadBalancer: unknown key "weight""#),
            (service(base + ", ipFamilies: IPv5"), "services[0].ipFamilies: expected Automatic, IPv4, IPv6 or Dual"),
            (service(base + ", canonical: 1"), #"services[0].canonical: expected true or false, got "1""#),
            (service(base + ", visibility: Private"), "services[0].visibility: expected Public or Namespace"),
        ])
    }

    @Test func policyFieldRefusals() {
        let base = "name: p, namespace: ns, scope: Global, action: Allow, dryRun: false"
        func policy(_ fields: String) -> String { "policies:\n- {" + fields + "}" }
        func match(_ text: String) -> String { policy(base + ", rules: [[[" + text + "]]]") }
        expectRefusals([
            (policy("name: p, namespace: ns, scope: Global, action: Allow, rules: []"), "policies[0].dryRun: required (line 2)"),
            (policy("namespace: ns, scope: Global, action: Allow, dryRun: false, rules: []"), "policies[0].name: required"),
            (policy("name: p, namespace: ns, action: Allow, dryRun: false, rules: []"), "policies[0].scope: required"),
            (policy("name: p, namespace: ns, scope: Global, dryRun: false, rules: []"), "policies[0].action: required"),
            (policy(base), "policies[0].rules: required"),
            (policy(base + ", rules: [], extensions: []"), #"policies[0]: unknown key "extensions""#),
            (policy("name: a/b, namespace: ns, scope: Global, action: Allow, dryRun: false, rules: []"),
             "policies[0].name: a policy name cannot contain '/'"),
            (policy("name: p, namespace: ns, scope: Workload, action: Allow, dryRun: false, rules: []"),
             #"policies[0].scope: expected Global, Namespace or WorkloadSelector, got "Workload""#),
            (policy("name: p, namespace: ns, scope: Global, action: Audit, dryRun: false, rules: []"), "policies[0].action: expected Allow or Deny"),
            (policy("name: p, namespace: ns, scope: Global, action: Allow, dryRun: \"false\", rules: []"), "policies[0].dryRun: expected true or false"),
            (policy(base + ", rules: {}"), "policies[0].rules: expected a sequence, got a mapping"),
            (policy(base + ", rules: [[{}]]"), "policies[0].rules[0][0]: expected a sequence, got a mapping"),
            (match("x"), "policies[0].rules[0][0][0]: expected a mapping, got a scalar"),
            (match("{headers: []}"), #"policies[0].rules[0][0][0]: unknown key "headers""#),
            (match("{principals: [a]}"), "policies[0].rules[0][0][0].principals[0]: expected a tagged string match (!Exact v, !Prefix v, !Suffix v or !Presence []), got a scalar"),
            (match("{principals: [{Exact: a}]}"), "policies[0].rules[0][0][0].principals[0]: expected a tagged string match"),
            (match("{namespaces: [!Regex a]}"), #"policies[0].rules[0][0][0].namespaces[0]: unknown string match "!Regex""#),
            (match("{notNamespaces: [!Presence x]}"), "notNamespaces[0]: !Presence takes an empty sequence"),
            (match("{notPrincipals: [!Presence [a]]}"), "notPrincipals[0]: !Presence takes an empty sequence"),
            (match("{principals: [!Exact [a]]}"), "principals[0]: expected a string, got a tagged value"),
            (match("{principals: [!Exact \"a\\nb\"]}"), "principals[0]: control or format characters"),
            (match("{principals: !Exact a}"), "principals: expected a sequence, got a tagged value"),
            (match("{sourceIps: [10.0.0.1]}"), #"sourceIps[0]: expected a CIDR block such as 10.0.0.0/8 or fd00::/8, got "10.0.0.1""#),
            (match("{notSourceIps: [10.0.0.0/33]}"), "notSourceIps[0]: expected a CIDR block"),
            (match("{destinationIps: [\"fd00::/129\"]}"), "destinationIps[0]: expected a CIDR block"),
            (match("{notDestinationIps: [10.0.0.0/08]}"), "notDestinationIps[0]: expected a CIDR block"),
            (match("{destinationPorts: [65536]}"), #"destinationPorts[0]: expected an integer from 0 to 65535, got "65536""#),
            (match("{notDestinationPorts: [\"80\"]}"), "notDestinationPorts[0]: expected an integer from 0 to 65535, got the quoted string"),
            (match("{serviceAccounts: [{namespace: ns}]}"), "serviceAccounts[0].serviceAccount: required"),
            (match("{notServiceAccounts: [{namespace: ns, serviceAccount: sa, name: x}]}"), #"notServiceAccounts[0]: unknown key "name""#),
            (match("{serviceAccounts: [{namespace: ns, serviceAccount: SA}]}"), "serviceAccounts[0].serviceAccount: expected at most 253"),
        ])
    }

    /// Each text is refused with a `ParseError` whose description contains the message.
    func expectRefusals(_ cases: [(String, String)], sourceLocation: SourceLocation = #_sourceLocation) {
        for (text, message) in cases {
            do {
                _ = try LocalConfig.parse(text)
                Issue.record("\(text.debugDescription) was accepted", sourceLocation: sourceLocation)
            } catch let error as LocalConfig.ParseError {
                #expect(error.description.hasPrefix("LOCAL_XDS_PATH: "), sourceLocation: sourceLocation)
                #expect(error.description.contains(message), "\(text.debugDescription): \(error)", sourceLocation: sourceLocation)
            } catch {
                Issue.record("\(text.debugDescription): unexpected \(error)", sourceLocation: sourceLocation)
            }
        }
    }
}

/// Documents shared by the tests.
private enum Fixture {
    /// The example from ISTIO_COMPAT §19 (real ztunnel's LOCAL_XDS_PATH format).
    static let example = """
        workloads:
        - uid: demo//Pod/shop/frontend-7d9f
          name: frontend-7d9f
          namespace: shop
          serviceAccount: frontend
          trustDomain: cluster.local
          clusterId: demo
          workloadIps: ["10.10.1.5"]
          protocol: HBONE
          node: node-a
          canonicalName: frontend
          canonicalRevision: v2
          workloadName: frontend
          workloadType: deployment
          services:
            "shop/frontend.shop.svc.cluster.local":
              80: 8080
        - uid: demo//Pod/shop/cart-5c2a
          name: cart-5c2a
          namespace: shop
          serviceAccount: cart
          trustDomain: cluster.local
          clusterId: demo
          workloadIps: ["10.10.2.9"]
          protocol: HBONE
          node: node-b
          authorizationPolicies: ["shop/cart-only-frontend"]
          services:
            "shop/cart.shop.svc.cluster.local":
              9090: 9090
        services:
        - name: frontend
          namespace: shop
          hostname: frontend.shop.svc.cluster.local
          vips: ["/10.96.10.1"]
          ports: {80: 8080}
        - name: cart
          namespace: shop
          hostname: cart.shop.svc.cluster.local
          vips: ["/10.96.10.2"]
          ports: {9090: 9090}
          loadBalancer:
            routingPreferences: [Node, Zone]
            mode: Failover
            healthPolicy: OnlyHealthy
        policies:
        - name: cart-only-frontend
          namespace: shop
          scope: WorkloadSelector
          action: Allow
          dryRun: false
          rules:
          - - - principals:
                - !Exact cluster.local/ns/shop/sa/frontend
            - - destinationPorts: [9090]
        - name: no-legacy-net
          namespace: shop
          scope: Namespace
          action: Deny
          dryRun: false
          rules:
          - - - sourceIps: ["192.168.0.0/16"]
        """

    /// examples/local.yaml, the file the demo uses, read from the repository.
    static var demo: String {
        get throws {
            let root = String(#filePath).split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
            guard let file = fopen(root + "/examples/local.yaml", "r") else { throw DemoFileMissing() }
            defer { fclose(file) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = fread(&chunk, 1, chunk.count, file)
                if count == 0 { break }
                bytes += chunk[0..<count]
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    struct DemoFileMissing: Error {}

    /// Every field of the format (a copy of Fuzz/seeds/local_config/model.yaml).
    static let everyField = """
        # Every field the local format has, as the mesh model reads it.
        workloads:
        - uid: demo//Pod/shop/frontend-7d9f
          name: frontend-7d9f
          namespace: shop
          workloadIps: ["10.10.1.5", "fd00::5"]
          hostname: frontend.example.com
          network: net-a
          protocol: HBONE
          trustDomain: cluster.local
          serviceAccount: frontend
          waypoint: {destination: "shop/waypoint.shop.svc.cluster.local", hboneMtlsPort: 15008}
          networkGateway: {destination: "net-b/192.0.2.10", hboneMtlsPort: 15009}
          node: node-a
          canonicalName: frontend
          canonicalRevision: v2
          workloadType: pod
          workloadName: frontend
          nativeTunnel: true
          applicationTunnel: {protocol: PROXY, port: 15088}
          status: Unhealthy
          clusterId: demo
          locality: {region: eu, zone: eu-1, subzone: rack-3}
          networkMode: HostNetwork
          capacity: 4294967295
          services:
            "shop/frontend.shop.svc.cluster.local": {80: 8080, "443": 0}
          authorizationPolicies: [shop/only-frontend]
        - namespace: shop
          workloadIps: []
        services:
        - name: frontend
          namespace: shop
          hostname: frontend.shop.svc.cluster.local
          vips: ["/10.96.10.1", "net-a/fd00:96::1"]
          ports: {80: 8080, 443: 0}
          subjectAltNames: [spiffe://cluster.local/ns/shop/sa/frontend]
          waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
          loadBalancer: {routingPreferences: [Region, Zone, Subzone, Node, Cluster, Network], mode: Strict, healthPolicy: AllowAll}
          ipFamilies: Dual
          canonical: true
          visibility: Namespace
        policies:
        - name: only-frontend
          namespace: shop
          scope: WorkloadSelector
          action: Allow
          dryRun: true
          rules:
          - - - namespaces: [!Exact shop]
                notNamespaces: [!Prefix kube-]
                principals: [!Suffix /sa/frontend, !Presence []]
                notPrincipals: [!Exact "cluster.local/ns/shop/sa/evil"]
                sourceIps: [10.0.0.0/8]
                notSourceIps: ["fd00::/8"]
                destinationIps: [10.10.1.5/32]
                notDestinationIps: [0.0.0.0/0]
                destinationPorts: [8080, 65535]
                notDestinationPorts: [0]
                serviceAccounts: [{namespace: shop, serviceAccount: frontend}]
                notServiceAccounts: [{namespace: shop, serviceAccount: evil}]
            - - {}
          - []
        - name: istio_converted_static_strict
          namespace: istio-system
          scope: Global
          action: Deny
          dryRun: false
          rules: []
        """
}
