import Testing
@testable import NetWorker

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
        #expect(config.workloads == [
            .init(name: "frontend-7d9f", namespace: "shop", serviceAccount: "frontend", trustDomain: "cluster.local",
                  node: "node-a", protocolName: "HBONE"),
            .init(name: "cart-5c2a", namespace: "shop", serviceAccount: "cart", trustDomain: "cluster.local",
                  node: "node-b", protocolName: "HBONE"),
        ])
        let demo = try LocalConfig.parse(Fixture.demo)
        #expect(demo.workloads.map(\.name) == ["frontend-7d9f"])
        #expect(demo.wantedIdentities(node: "").identities == ["spiffe://cluster.local/ns/shop/sa/frontend"])
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
        #expect(config.workloads.map(\.protocolName) == ["TCP", "TCP"])
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
            #expect(LocalConfig.isIPAddress(good), "\(good)")
        }
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.1.1.1", "1..2.3", "1.2.3.4.", " 1.2.3.4", "a.b.c.d",
                    ":", ":::", "1:2", "1::2::3", ":1::", "1:2:3:4:5:6:7:8:9", "1::2:3:4:5:6:7:8", "12345::", "g::",
                    "::1%eth0", "[::1]", "10.0.0.0/8", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3", "1.2.3.4::"] {
            #expect(!LocalConfig.isIPAddress(bad), "\(bad)")
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

    /// A copy of examples/local.yaml, the file the demo uses.
    static let demo = """
        # A local-mode configuration in real ztunnel's LOCAL_XDS_PATH format (ISTIO_COMPAT §19).
        # The daemon checks that it is readable; workloads, services and policies are applied once
        # the xDS/local-config work lands (see the issues).
        workloads:
        - uid: demo//Pod/shop/frontend-7d9f
          name: frontend-7d9f
          namespace: shop
          serviceAccount: frontend
          trustDomain: cluster.local
          workloadIps: ["10.10.1.5"]
          protocol: HBONE
        services: []
        policies: []
        """
}
