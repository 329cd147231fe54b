#if canImport(Glibc)
import Glibc
#endif
import Shared
import Testing
@testable import Supervisor

/// PROXY_CONFIG and the mesh file as defaults for the settings the environment leaves unset.
@Suite struct ProxyConfigLoaderTests {
    private func withMeshFile<T>(_ text: String?, _ body: (String) throws -> T) throws -> T {
        var template = Array("/tmp/ztunnel-meshXXXXXX".utf8CString)
        let directory = try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) })
        let path = directory + "/mesh"
        defer {
            unlink(path)
            rmdir(directory)
        }
        if let text {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            _ = text.withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        return try body(path)
    }

    /// Each field feeds its setting, with the source named; the environment and flags still win.
    @Test func fieldsBecomeSettingsTheEnvironmentLeavesUnset() throws {
        let mesh = """
            defaultConfig:
              discoveryAddress: istiod.mesh:15012
              statsPort: 15888
              proxyMetadata: {ISTIO_META_DNS_CAPTURE: "false", FOO: from-file}
            """
        let environment = [
            "PROXY_CONFIG": #"{"proxyAdminPort": 15999, "concurrency": 3, "proxyMetadata": {"FOO": "from-env-config"}}"#,
            "ISTIO_META_BAR": "env",
            "LOCAL_XDS_PATH": "/dev/null",
        ]
        let configuration = try withMeshFile(mesh) { path in
            let fallbacks = try ProxyConfigLoader.fallbacks(environment: environment, meshPath: path)
            #expect(fallbacks["XDS_ADDRESS"]?.source == "defaultConfig of \(path) discoveryAddress")
            #expect(fallbacks["ZTUNNEL_ADMIN_ADDR"]?.source == "PROXY_CONFIG proxyAdminPort")
            return try Configuration(environment: environment, arguments: ["--stats-addr", "127.0.0.1:16000"], fallbacks: fallbacks)
        }
        #expect(configuration.string("XDS_ADDRESS") == "istiod.mesh:15012")
        #expect(configuration.string("ZTUNNEL_ADMIN_ADDR") == "127.0.0.1:15999")
        #expect(configuration.string("ZTUNNEL_STATS_ADDR") == "127.0.0.1:16000")  // the flag wins
        #expect(configuration.string("ZTUNNEL_WORKER_THREADS") == "3")
        #expect(configuration.passthroughValues["ISTIO_META_FOO"] == "from-env-config")
        #expect(configuration.passthroughValues["ISTIO_META_BAR"] == "env")
        #expect(configuration.passthroughValues["ISTIO_META_DNS_CAPTURE"] == "false")

        // The environment wins over both documents.
        var explicit = environment
        explicit["XDS_ADDRESS"] = ""
        explicit["ISTIO_META_FOO"] = "env"
        explicit["ZTUNNEL_WORKER_THREADS"] = "5"
        let fallbacks = try withMeshFile(mesh) { try ProxyConfigLoader.fallbacks(environment: explicit, meshPath: $0) }
        let overridden = try Configuration(environment: explicit, arguments: [], fallbacks: fallbacks)
        #expect(overridden.string("XDS_ADDRESS") == "")
        #expect(overridden.passthroughValues["ISTIO_META_FOO"] == "env")
        #expect(overridden.string("ZTUNNEL_WORKER_THREADS") == "5")
    }

    /// In Kubernetes, discoveryAddress replaces the istiod default for XDS_ADDRESS (and only
    /// for it: CA_ADDRESS keeps istiod's, as upstream).
    @Test func discoveryAddressBeatsTheKubernetesDefault() throws {
        let environment = ["KUBERNETES_SERVICE_HOST": "10.0.0.1", "PROXY_CONFIG": "discoveryAddress: istiod-rev1.istio-system.svc:15012"]
        let fallbacks = try withMeshFile(nil) { try ProxyConfigLoader.fallbacks(environment: environment, meshPath: $0) }
        let configuration = try Configuration(environment: environment, arguments: [], fallbacks: fallbacks)
        #expect(configuration.string("XDS_ADDRESS") == "istiod-rev1.istio-system.svc:15012")
        #expect(configuration.string("CA_ADDRESS") == Configuration.istiodAddress)
    }

    /// A value the documents give is checked like one from the environment, and the error says
    /// where it came from.
    @Test func aBadValueNamesItsSource() throws {
        let environment = ["PROXY_CONFIG": "proxyMetadata: {\"BAD-NAME\": x}"]
        let fallbacks = try withMeshFile(nil) { try ProxyConfigLoader.fallbacks(environment: environment, meshPath: $0) }
        do {
            _ = try Configuration(environment: environment, arguments: [], fallbacks: fallbacks)
            Issue.record("accepted")
        } catch {
            #expect("\(error)".hasPrefix("invalid ISTIO_META_BAD-NAME (PROXY_CONFIG proxyMetadata.BAD-NAME): "))
        }
    }

    /// proxyMetadata's CLUSTER_ID does not change ztunnel's cluster id (upstream reads it from the
    /// environment alone); --proxy-config is read like PROXY_CONFIG, and wins over it.
    @Test func theClusterIdStaysTheEnvironmentsAndTheFlagIsRead() throws {
        let environment = ["PROXY_CONFIG": "proxyMetadata: {CLUSTER_ID: mesh-wide, OTHER: x}\nconcurrency: 2"]
        let fallbacks = try withMeshFile(nil) {
            try ProxyConfigLoader.fallbacks(environment: environment, arguments: ["--proxy-config", "concurrency: 4"], meshPath: $0)
        }
        #expect(fallbacks["ZTUNNEL_WORKER_THREADS"]?.value == "4")
        #expect(fallbacks["ISTIO_META_OTHER"] == nil)  // the flag's document replaced the environment's
        let fromEnvironment = try withMeshFile(nil) { try ProxyConfigLoader.fallbacks(environment: environment, meshPath: $0) }
        #expect(fromEnvironment["ISTIO_META_CLUSTER_ID"] == nil)
        #expect(fromEnvironment["ISTIO_META_OTHER"]?.value == "x")
        let configuration = try Configuration(environment: environment, arguments: [], fallbacks: fromEnvironment)
        #expect(configuration.string("ISTIO_META_CLUSTER_ID") == "Kubernetes")
        #expect(ProxyConfigLoader.flagValue("--proxy-config", in: ["--proxy-config=a: 1"]) == "a: 1")
    }

    /// No mesh file is no defaults; one that cannot be read or parsed stops the start.
    @Test func theMeshFileMissingIsNothingUnreadableIsAnError() throws {
        #expect(try withMeshFile(nil) { try ProxyConfigLoader.fallbacks(environment: [:], meshPath: $0) }.isEmpty)
        #expect(throws: ProxyConfigLoader.Failure.self) {
            try ProxyConfigLoader.fallbacks(environment: [:], meshPath: "/tmp")  // a directory
        }
        do {
            _ = try withMeshFile("defaultConfig:\n  statsPort: |\n    x\n") { try ProxyConfigLoader.fallbacks(environment: [:], meshPath: $0) }
            Issue.record("accepted")
        } catch {
            #expect("\(error)".contains("invalid mesh config"))
            #expect("\(error)".contains("block scalars"))
        }
        do {
            _ = try ProxyConfigLoader.fallbacks(environment: ["PROXY_CONFIG": "concurrency: lots"])
            Issue.record("accepted")
        } catch {
            #expect("\(error)" == "invalid PROXY_CONFIG: concurrency: expected a thread count 0-65535, got \"lots\" (line 1)")
        }
    }
}
