import Foundation
import IPC
import Shared
import Testing
@testable import NetWorker

/// `HTTPEndpoints`: the replies of the readiness (15021), stats (15020) and admin (15000) ports
/// for a given request and state, including the follow-ups (shutdown, fault injection) and odd
/// request targets.
@Suite struct HTTPEndpointsTests {
    /// The settings a NetWorker is given that the endpoints read, plus a secret it must not show.
    private static let baseSettings = [
        "ZTUNNEL_DEBUG_FAULT_INJECTION": "false",
        "RUST_LOG": "debug",
        "LOG_FORMAT": "json",
        "LOCAL_XDS_PATH": "/etc/ztunnel/local.yaml",
        "NODE_NAME": "node-a",
        "ISTIO_META_ISTIO_VERSION": "1.27.0",
    ]

    private func endpoints(_ overrides: [String: String] = [:], liveConnections: Int = 0,
                           boundMetrics: @escaping () -> [String] = { [] }) throws -> (HTTPEndpoints, NetWorkerState) {
        let settings = Self.baseSettings.merging(overrides) { _, new in new }
        let configuration = try Configuration(resolved: settings, onlyGiven: true)
        let state = NetWorkerState(configuration: configuration, index: 0)
        let endpoints = HTTPEndpoints(state: state, identities: IdentityTable(), liveConnections: { liveConnections },
                                      boundMetrics: boundMetrics)
        return (endpoints, state)
    }

    private func entry(_ role: WorkerRole, _ index: UInt16, _ state: ProcessEntry.State, restarts: UInt32 = 0) -> ProcessEntry {
        ProcessEntry(role: role, index: index, pid: 100 + Int32(index), state: state, restarts: restarts, lastExitCause: "")
    }

    // MARK: - Readiness

    @Test func readinessServesOnlyItsPath() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running)])
        for path in ["/", "/healthz", "/healthz/ready/", "/healthz/readyz", "/metrics", ""] {
            let reply = endpoints.respond(port: .readiness, method: "GET", uri: path)
            #expect(reply.status == 404, "\(path)")
            #expect(reply.followUp == .none)
        }
        // A query does not change the path.
        #expect(endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready?x=1").status == 200)
    }

    @Test func readinessTakesOnlyGet() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running)])
        for method in ["POST", "PUT", "DELETE", "HEAD", "get"] {
            let reply = endpoints.respond(port: .readiness, method: method, uri: "/healthz/ready")
            #expect(reply.status == 405, "\(method)")
        }
    }

    @Test func notReadyWithoutAProcessTable() throws {
        let (endpoints, _) = try endpoints()
        let reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
        #expect(reply.status == 500)
        #expect(reply.body == "not ready, pending: process table\n")
    }

    @Test func readyWhenEveryWorkerRuns() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running), entry(.netWorker, 0, .running),
                                    entry(.netWorker, 1, .running)])
        let reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
        #expect(reply.status == 200)
        #expect(reply.body == "ready\n")
    }

    @Test func notReadyNamesThePendingWorkers() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running), entry(.netWorker, 0, .running),
                                    entry(.netWorker, 1, .settingUp)])
        var reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
        #expect(reply.status == 500)
        #expect(reply.body == "not ready, pending: net-worker[1]\n")

        for pending in [ProcessEntry.State.starting, .backoff, .stopped] {
            state.update(processTable: [entry(.netWorker, 0, .running), entry(.certWorker, 0, pending)])
            reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
            #expect(reply.status == 500)
            #expect(reply.body == "not ready, pending: cert-worker[0]\n", "\(pending)")
        }

        state.update(processTable: [entry(.netWorker, 2, .starting), entry(.netWorker, 0, .running),
                                    entry(.certWorker, 0, .backoff)])
        reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
        #expect(reply.body == "not ready, pending: cert-worker[0], net-worker[2]\n")
    }

    @Test func notReadyWhileDraining() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running), entry(.netWorker, 0, .running)])
        #expect(endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready").status == 200)
        state.startDraining()
        let reply = endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready")
        #expect(reply.status == 500)
        #expect(reply.body == "not ready, pending: draining\n")
    }

    // MARK: - Stats

    @Test func metricsOnBothPaths() throws {
        let (endpoints, _) = try endpoints(liveConnections: 7)
        for path in ["/metrics", "/stats/prometheus", "/metrics?format=x", "/stats/prometheus?="] {
            let reply = endpoints.respond(port: .stats, method: "GET", uri: path)
            #expect(reply.status == 200, "\(path)")
            #expect(reply.body.hasSuffix("\n# EOF\n"), "\(path)")
            #expect(reply.body.components(separatedBy: "# EOF").count == 2, "one EOF marker")
            #expect(reply.body.contains("istio_tcp_sockets_open{reporter=\"source\"} 7\n"))
            #expect(reply.followUp == .none)
        }
    }

    @Test func statsServesOnlyMetrics() throws {
        let (endpoints, _) = try endpoints()
        for path in ["/", "/metric", "/metrics/", "/stats", "/config_dump", "/healthz/ready", "?"] {
            #expect(endpoints.respond(port: .stats, method: "GET", uri: path).status == 404, "\(path)")
        }
    }

    @Test func restartsAreSummedPerRole() throws {
        let (endpoints, state) = try endpoints()
        var body = endpoints.respond(port: .stats, method: "GET", uri: "/metrics").body
        #expect(body.contains("ztunnel_worker_restarts_total{role=\"net-worker\"} 0\n"))
        #expect(body.contains("ztunnel_worker_restarts_total{role=\"cert-worker\"} 0\n"))

        state.update(processTable: [entry(.netWorker, 0, .running, restarts: 2), entry(.certWorker, 0, .running, restarts: 7),
                                    entry(.netWorker, 1, .backoff, restarts: 3), entry(.netWorker, 2, .running, restarts: 0)])
        body = endpoints.respond(port: .stats, method: "GET", uri: "/stats/prometheus").body
        #expect(body.contains("ztunnel_worker_restarts_total{role=\"net-worker\"} 5\n"))
        #expect(body.contains("ztunnel_worker_restarts_total{role=\"cert-worker\"} 7\n"))
    }

    @Test func restartsDoNotOverflow() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.netWorker, 0, .running, restarts: .max), entry(.netWorker, 1, .running, restarts: .max)])
        let body = endpoints.respond(port: .stats, method: "GET", uri: "/metrics").body
        #expect(body.contains("ztunnel_worker_restarts_total{role=\"net-worker\"} \(2 * UInt64(UInt32.max))\n"))
    }

    @Test func metricsAreOpenMetricsWhenAskedForElsePlainText() throws {
        let (endpoints, _) = try endpoints()
        let asked = endpoints.respond(port: .stats, method: "GET", uri: "/metrics",
                                      accept: "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        #expect(asked.contentType == "application/openmetrics-text;charset=utf-8;version=1.0.0")
        let plain = endpoints.respond(port: .stats, method: "GET", uri: "/stats/prometheus", accept: "*/*")
        #expect(plain.contentType == "text/plain; charset=utf-8" && plain.body == asked.body)
        #expect(endpoints.respond(port: .stats, method: "GET", uri: "/nope", accept: "application/openmetrics-text").contentType
            == "text/plain; charset=utf-8")
    }

    @Test func istioBuildCarriesTheVersionOnlyWhenItIsALabelValue() throws {
        let (endpoints, _) = try endpoints()
        #expect(endpoints.respond(port: .stats, method: "GET", uri: "/metrics").body
            .contains("istio_build{component=\"ztunnel\",tag=\"1.27.0\"} 1\n"))
        let (quoted, _) = try self.endpoints(["ISTIO_META_ISTIO_VERSION": "1.2\"} 9\nx"])
        #expect(quoted.respond(port: .stats, method: "GET", uri: "/metrics").body
            .contains("istio_build{component=\"ztunnel\",tag=\"unknown\"} 1\n"))
    }

    @Test func boundMetricsComeBeforeEOF() throws {
        let reporter = BoundReporter(now: { 0 })
        reporter.reached(.handshakeTimeout, listener: "socks5", peer: "?", detail: "test")
        let (endpoints, _) = try endpoints(boundMetrics: reporter.metricLines)
        let body = endpoints.respond(port: .stats, method: "GET", uri: "/metrics").body
        #expect(body.hasSuffix("ztunnel_bound_reached_total{listener=\"socks5\",bound=\"handshake_timeout\"} 1\n# EOF\n"))
    }

    // MARK: - Admin: /config_dump

    private func configDump(_ endpoints: HTTPEndpoints, uri: String = "/config_dump") throws -> [String: Any] {
        let reply = endpoints.respond(port: .admin, method: "GET", uri: uri)
        #expect(reply.status == 200)
        #expect(reply.contentType == "application/json")
        let object = try JSONSerialization.jsonObject(with: Data(reply.body.utf8))
        return try #require(object as? [String: Any])
    }

    @Test func configDumpHasTheExpectedSections() throws {
        let (endpoints, state) = try endpoints()
        state.update(processTable: [entry(.certWorker, 0, .running, restarts: 1), entry(.netWorker, 0, .settingUp)])
        let dump = try configDump(endpoints)
        for key in ["workloads", "services", "policies", "config", "certificates", "processes"] {
            #expect(dump[key] != nil, "\(key)")
        }
        let processes = try #require(dump["processes"] as? [[String: Any]])
        #expect(processes.count == 2)
        #expect(processes.first?["role"] as? String == "cert-worker")
        #expect(processes.first?["restarts"] as? Int == 1)
        #expect(processes.last?["role"] as? String == "net-worker")
        #expect(processes.last?["state"] as? String == "SettingUp")
        #expect((dump["certificates"] as? [Any])?.isEmpty == true)
    }

    @Test func configDumpShowsOnlyGivenSettings() throws {
        let (endpoints, _) = try endpoints()
        let config = try #require(try configDump(endpoints)["config"] as? [String: String])
        #expect(config == [
            "ztunnelDebugFaultInjection": "false",
            "rustLog": "debug",
            "logFormat": "json",
            "localXdsPath": "/etc/ztunnel/local.yaml",
            "nodeName": "node-a",
            "istioMetaIstioVersion": "1.27.0",
        ])
    }

    @Test func configDumpNeverShowsASecret() throws {
        let (endpoints, _) = try endpoints(["AUTH_TOKEN": "literal-secret"])
        let reply = endpoints.respond(port: .admin, method: "GET", uri: "/config_dump")
        #expect(reply.status == 200)
        #expect(!reply.body.contains("literal-secret"))
        let config = try #require(try configDump(endpoints)["config"] as? [String: String])
        #expect(config["authToken"] == nil)
        #expect(config["rustLog"] == "debug")
    }

    // MARK: - Admin: /quitquitquit and /debug/fault

    @Test func quitNeedsPost() throws {
        let (endpoints, _) = try endpoints()
        let post = endpoints.respond(port: .admin, method: "POST", uri: "/quitquitquit")
        #expect(post.status == 200)
        #expect(post.followUp == .requestShutdown)
        for method in ["GET", "PUT", "post"] {
            let reply = endpoints.respond(port: .admin, method: method, uri: "/quitquitquit")
            #expect(reply.status == 405, "\(method)")
            #expect(reply.followUp == .none)
        }
        // Only the admin port shuts down.
        #expect(endpoints.respond(port: .stats, method: "POST", uri: "/quitquitquit").followUp == .none)
        #expect(endpoints.respond(port: .readiness, method: "POST", uri: "/quitquitquit").followUp == .none)
    }

    @Test func faultInjectionIsAbsentUnlessEnabled() throws {
        let (endpoints, _) = try endpoints()
        for method in ["POST", "GET"] {
            for uri in ["/debug/fault", "/debug/fault?kind=seccomp", "/debug/fault?kind=ipc-garbage"] {
                let reply = endpoints.respond(port: .admin, method: method, uri: uri)
                #expect(reply.status == 404, "\(method) \(uri)")
                #expect(reply.followUp == .none)
            }
        }
    }

    @Test func faultInjectionWhenEnabled() throws {
        let (endpoints, _) = try endpoints(["ZTUNNEL_DEBUG_FAULT_INJECTION": "true"])
        for kind in FaultInjection.Kind.allCases {
            let reply = endpoints.respond(port: .admin, method: "POST", uri: "/debug/fault?kind=\(kind.rawValue)")
            #expect(reply.status == 200, "\(kind)")
            #expect(reply.followUp == HTTPEndpoints.FollowUp.injectFault(kind, port: 0), "\(kind)")
        }
        #expect(FaultInjection.Kind(rawValue: "seccomp") != nil)
        #expect(FaultInjection.Kind(rawValue: "ipc-garbage") != nil)
        let connect = endpoints.respond(port: .admin, method: "POST", uri: "/debug/fault?kind=cert-connect&port=15012")
        #expect(connect.followUp == HTTPEndpoints.FollowUp.injectFault(.certConnect, port: 15012))

        let get = endpoints.respond(port: .admin, method: "GET", uri: "/debug/fault?kind=seccomp")
        #expect(get.status == 405)
        #expect(get.followUp == .none)

        for uri in ["/debug/fault", "/debug/fault?kind=", "/debug/fault?kind=SECCOMP", "/debug/fault?kind=reboot",
                    "/debug/fault?=seccomp", "/debug/fault?kind=bogus&kind=seccomp", "/debug/fault?kind=seccomp%00",
                    "/debug/fault?port=1"] {
            let reply = endpoints.respond(port: .admin, method: "POST", uri: uri)
            #expect(reply.status == 400, "\(uri)")
            #expect(reply.followUp == .none, "\(uri)")
        }
        // The first `kind` wins; a later one cannot change it.
        #expect(endpoints.respond(port: .admin, method: "POST", uri: "/debug/fault?kind=seccomp&kind=x").followUp
            == HTTPEndpoints.FollowUp.injectFault(.seccomp, port: 0))
    }

    @Test func adminUnknownPathsAreNotFound() throws {
        let (endpoints, _) = try endpoints()
        #expect(endpoints.respond(port: .admin, method: "GET", uri: "/").status == 200)
        for path in ["/metrics", "/healthz/ready", "/config_dump/", "/debug", "/quitquitquit/", "*"] {
            #expect(endpoints.respond(port: .admin, method: "GET", uri: path).status == 404, "\(path)")
        }
    }

    // MARK: - Odd request targets

    @Test func malformedQueriesNeverCrash() throws {
        let (endpoints, state) = try endpoints(["ZTUNNEL_DEBUG_FAULT_INJECTION": "true"])
        state.update(processTable: [entry(.netWorker, 0, .running)])
        let paths = ["/config_dump", "/quitquitquit", "/debug/fault", "/metrics", "/healthz/ready", "/", "", "="]
        let queries = ["?=", "?", "?&&=&", "?a==b", "?=&=&=", "??", "?%", "?&", "?kind", "?kind=&kind"]
        for port in [HTTPEndpoints.Port.admin, .stats, .readiness] {
            for method in ["GET", "POST", ""] {
                for path in paths {
                    for query in queries {
                        let reply = endpoints.respond(port: port, method: method, uri: path + query)
                        #expect([200, 400, 404, 405].contains(reply.status), "\(method) \(path + query)")
                    }
                }
            }
        }
        // The path still decides: these are served as if the query were absent.
        _ = try configDump(endpoints, uri: "/config_dump?=")
        _ = try configDump(endpoints, uri: "/config_dump?&&=&")
        #expect(endpoints.respond(port: .readiness, method: "GET", uri: "/healthz/ready?=").status == 200)
        #expect(endpoints.respond(port: .admin, method: "POST", uri: "/quitquitquit?=").followUp == .requestShutdown)
    }
}
