import Testing
@testable import Mesh

/// PROXY_CONFIG and the mesh file's defaultConfig (ISTIO_COMPAT §18), read as upstream reads them.
@Suite struct ProxyConfigTests {
    /// The JSON form upstream's own test uses: every field read, ISTIO_META_ stripped from
    /// metadata names, unprefixed names kept.
    @Test func theJSONFormReadsEveryField() throws {
        let text = """
            {
              "discoveryAddress": "istiod-rev0.istio-system-2:15012",
              "proxyAdminPort": 15999,
              "statsPort": "15888",
              "concurrency": 3,
              "proxyMetadata": {"ISTIO_META_BAR": "bar", "NO_PREFIX": "no-prefix", "DNS_CAPTURE": true}
            }
            """
        let config = try #require(try ProxyConfig.parse(text))
        #expect(config.discoveryAddress == "istiod-rev0.istio-system-2:15012")
        #expect(config.proxyAdminPort == 15999)
        #expect(config.statsPort == 15888)
        #expect(config.concurrency == 3)
        #expect(config.proxyMetadata.map(\.key) == ["BAR", "NO_PREFIX", "DNS_CAPTURE"])
        #expect(config.proxyMetadata.map(\.value) == ["bar", "no-prefix", "true"])
    }

    /// The mesh file: only defaultConfig is ztunnel's; other MeshConfig keys and Envoy's
    /// ProxyConfig fields (tracing, drainDuration) are ignored, not refused.
    @Test func theMeshFileGivesItsDefaultConfig() throws {
        let text = """
            defaultConfig:
              discoveryAddress: istiod.istio-system.svc:15012
              drainDuration: 45s
              tracing:
                zipkin:
                  address: zipkin.istio-system:9411
              proxyMetadata:
                ISTIO_META_DNS_CAPTURE: "false"
            defaultProviders:
              metrics:
              - prometheus
            trustDomain: cluster.local
            """
        let (read, skipped) = try ProxyConfig.parseMeshConfig(text, origin: "mesh")
        let config = try #require(read)
        #expect(skipped == nil)
        #expect(config.discoveryAddress == "istiod.istio-system.svc:15012")
        #expect(config.proxyAdminPort == nil && config.statsPort == nil && config.concurrency == nil)
        #expect(config.proxyMetadata.map(\.key) == ["DNS_CAPTURE"])
        #expect(config.proxyMetadata.map(\.value) == ["false"])
        #expect(try ProxyConfig.parseMeshConfig("trustDomain: cluster.local\n", origin: "mesh").config == nil)
        #expect(try ProxyConfig.parseMeshConfig("# nothing\n", origin: "mesh").config == nil)
    }

    /// A mesh file with YAML the reader does not take outside defaultConfig (a PEM block scalar,
    /// an anchor): defaultConfig is read alone and the reason given; inside it, still an error.
    @Test func aMeshFileBeyondTheReaderOutsideDefaultConfigStillGivesIt() throws {
        let text = """
            caCertificates:
            - pem: |
                -----BEGIN CERTIFICATE-----
                MIIB
                -----END CERTIFICATE-----
            # istiod's address
            defaultConfig:
              discoveryAddress: istiod.istio-system.svc:15012

              proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}
            extensionProviders: &providers
            - name: otel
            trustDomain: cluster.local
            """
        let (read, skipped) = try ProxyConfig.parseMeshConfig(text, origin: "mesh")
        let config = try #require(read)
        #expect(config.discoveryAddress == "istiod.istio-system.svc:15012")
        #expect(config.proxyMetadata.map(\.key) == ["DNS_CAPTURE"])
        #expect(skipped?.contains("block scalars") == true)
        // CRLF line ends, a BOM: the same.
        let crlf = "\u{FEFF}" + text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
        #expect(try ProxyConfig.parseMeshConfig(crlf, origin: "mesh").config?.discoveryAddress == "istiod.istio-system.svc:15012")
    }

    /// The fallback takes only a refusal outside the block: without a defaultConfig the file's
    /// own error stands, and so does one inside it (with the file's line number), two blocks, or
    /// a second document.
    @Test(arguments: [
        ("a: |\n  x\n", "mesh: line 1: block scalars"),
        ("a: |\n  x\ndefaultConfig:\n  concurrency: &c 2\n", "mesh: line 4: anchors"),
        ("a: |\n  x\ndefaultConfig:\n  concurrency: 1\ndefaultConfig:\n  concurrency: 2\n", "mesh: line 1: block scalars"),
        ("a: |\n  x\ndefaultConfig:\n  concurrency: 1\n---\nb: 1\n", "mesh: line 1: block scalars"),
        ("a: |\n  x\n\ndefaultConfig:\n  concurrency: lots\n", "mesh: defaultConfig.concurrency: expected a thread count 0-65535, got \"lots\" (line 5)"),
    ])
    func theFallbackTakesOnlyARefusalOutsideTheBlock(text: String, expected: String) {
        do {
            _ = try ProxyConfig.parseMeshConfig(text, origin: "mesh")
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".hasPrefix(expected), "\(error)")
        }
    }

    /// Bad values are refused with the field, the reason and the line, never read as 0 or
    /// skipped.
    @Test(arguments: [
        ("proxyAdminPort: 0", "proxyAdminPort: expected a port 1-65535, got \"0\" (line 1)"),
        ("statsPort: 70000", "statsPort: expected a port 1-65535, got \"70000\" (line 1)"),
        ("concurrency: -1", "concurrency: expected a thread count 0-65535, got \"-1\" (line 1)"),
        ("concurrency: two", "concurrency: expected a thread count 0-65535, got \"two\" (line 1)"),
        ("discoveryAddress: [a, b]", "discoveryAddress: expected a scalar, got a sequence (line 1)"),
        ("proxyMetadata: [A]", "proxyMetadata: expected a mapping of names to values, got a sequence (line 1)"),
        ("proxyMetadata:\n  A: {b: c}", "proxyMetadata.A: expected a scalar, got a mapping (line 2)"),
        ("proxyMetadata: {ISTIO_META_: x}", "proxyMetadata.ISTIO_META_: a name is needed after ISTIO_META_ (line 1)"),
        ("- a", "the top level must be a mapping, got a sequence (line 1)"),
        ("proxyAdminPort: &a 1", "line 1: anchors ('&') are not supported"),
    ])
    func badValuesAreRefusedWithTheirPlace(text: String, reason: String) {
        #expect(throws: ProxyConfig.ParseError.self) { try ProxyConfig.parse(text) }
        do { _ = try ProxyConfig.parse(text) } catch {
            #expect("\(error)" == "PROXY_CONFIG: \(reason)")
        }
    }

    /// defaultConfig that is not a mapping is named by its path.
    @Test func aDefaultConfigThatIsNotAMappingIsNamed() {
        do {
            _ = try ProxyConfig.parseMeshConfig("defaultConfig: 3\n", origin: "./etc/istio/config/mesh")
            Issue.record("accepted")
        } catch {
            #expect("\(error)" == "./etc/istio/config/mesh: defaultConfig must be a mapping, got a scalar (line 1)")
        }
        do {
            _ = try ProxyConfig.parseMeshConfig("defaultConfig: {concurrency: x}\n", origin: "m")
            Issue.record("accepted")
        } catch {
            #expect("\(error)" == "m: defaultConfig.concurrency: expected a thread count 0-65535, got \"x\" (line 1)")
        }
    }
}
