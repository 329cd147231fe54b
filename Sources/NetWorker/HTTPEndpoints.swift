import IPC
import Shared

/// The plain-HTTP endpoints of the admin (15000), stats (15020) and readiness (15021) ports, as
/// pure functions of the request and a state snapshot. The NIO handler only moves bytes.
struct HTTPEndpoints {
    enum Port: Sendable { case admin, stats, readiness }

    /// Something to do once the response has been written.
    enum FollowUp: Equatable, Sendable {
        case none
        case requestShutdown
        case injectFault(FaultInjection.Kind, port: UInt16)
        /// A fault for the CertWorker or the xDS worker, relayed through the Supervisor.
        case relayFault(FaultKind, port: UInt16)
        /// Put this log filter in force here and, through the Supervisor, in every process.
        case setLogFilter(String)
    }

    struct Reply: Sendable {
        var status: Int
        var reason: String
        var contentType = "text/plain; charset=utf-8"
        var body: String
        var followUp: FollowUp = .none
    }

    static let openMetrics = "application/openmetrics-text;charset=utf-8;version=1.0.0"

    let state: NetWorkerState
    let identities: IdentityTable
    let liveConnections: () -> Int
    /// The `ztunnel_bound_reached_total` lines (BoundReporter).
    var boundMetrics: () -> [String] = { [] }

    /// `accept`: the request's Accept header; a stats reply is OpenMetrics when it lists
    /// `application/openmetrics-text` (ISTIO_COMPAT §15), else plain text; the body is the same.
    func respond(port: Port, method: String, uri: String, accept: String = "") -> Reply {
        let target = RequestTarget(parsing: uri)
        let (path, query) = (target.path, target.query)
        switch port {
        case .readiness: return readiness(method: method, path: path)
        case .stats:
            var reply = stats(path: path)
            if reply.status == 200 && accept.lowercased().contains("application/openmetrics-text") {
                reply.contentType = Self.openMetrics
            }
            return reply
        case .admin: return admin(method: method, path: path, query: query)
        }
    }

    private func readiness(method: String, path: String) -> Reply {
        guard path == "/healthz/ready" else { return Reply(status: 404, reason: "Not Found", body: "not found\n") }
        guard method == "GET" else { return Reply(status: 405, reason: "Method Not Allowed", body: "method not allowed\n") }
        var pending = state.pendingReadiness()
        // The local workloads' certificates (issue #8): a workload served without one would have
        // its connections refused. Counted, not named: this port is open to the node's network.
        let missing = identities.missing.count
        if missing > 0 { pending.append("certificates (\(missing) pending)") }
        if let problem = Revocations.shared.problem { pending.append("revocation lists (\(problem))") }
        if pending.isEmpty { return Reply(status: 200, reason: "OK", body: "ready\n") }
        return Reply(status: 500, reason: "Internal Server Error", body: "not ready, pending: \(pending.joined(separator: ", "))\n")
    }

    private func stats(path: String) -> Reply {
        guard path == "/metrics" || path == "/stats/prometheus" else {
            return Reply(status: 404, reason: "Not Found", body: "not found\n")
        }
        let (table, _) = state.snapshot
        let version = state.configuration.string("ISTIO_META_ISTIO_VERSION")
        let tag = version.isEmpty || !version.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-+".contains($0)) })
            ? "unknown" : version
        var lines = [
            "# TYPE istio_build gauge",
            "istio_build{component=\"ztunnel\",tag=\"\(tag)\"} 1",
            "# TYPE istio_tcp_sockets_open gauge",
            "istio_tcp_sockets_open{reporter=\"source\"} \(liveConnections())",
            "# HELP ztunnel_worker_restarts Replacements of supervised worker processes, per role.",
            "# TYPE ztunnel_worker_restarts counter",
        ]
        for role in WorkerRole.allCases {
            let restarts = table.filter { $0.role == role }.reduce(UInt64(0)) { $0 + UInt64($1.restarts) }
            lines.append("ztunnel_worker_restarts_total{role=\"\(role)\"} \(restarts)")
        }
        lines += CertificateMetrics.lines(identities.certificateStatuses, identities.materialsById)
        lines += boundMetrics()
        lines.append("# EOF")
        return Reply(status: 200, reason: "OK", body: lines.joined(separator: "\n") + "\n")
    }

    private func admin(method: String, path: String, query: [String: String]) -> Reply {
        switch path {
        case "/":
            let links = ["/config_dump", "/logging", "/quitquitquit"].map { "<li><a href=\"\($0)\">\($0)</a></li>" }.joined()
            return Reply(status: 200, reason: "OK", contentType: "text/html; charset=utf-8",
                         body: "<html><body><h1>ztunnel admin</h1><ul>\(links)</ul></body></html>\n")
        case "/config_dump":
            return Reply(status: 200, reason: "OK", contentType: "application/json",
                         body: ConfigDump.build(state: state, certificates: identities.certificateStatuses, materials: identities.materialsById).serialized(pretty: true) + "\n")
        case "/logging":
            guard method == "POST" else {
                return Reply(status: 405, reason: "Method Not Allowed", body: "use POST\n" + LogFilterChange.usage)
            }
            switch LogFilterChange.outcome(current: Log.filter, initial: Log.initialFilter, query: query) {
            case .report:
                return Reply(status: 200, reason: "OK", body: "current log level is \(Log.filter)\n")
            case .change(let filter):
                return Reply(status: 200, reason: "OK", body: "current log level is \(filter)\n", followUp: .setLogFilter(filter))
            case .refused(let reason):
                return Reply(status: 400, reason: "Bad Request", body: "\(reason)\n" + LogFilterChange.usage)
            }
        case "/quitquitquit":
            guard method == "POST" else { return Reply(status: 405, reason: "Method Not Allowed", body: "use POST\n") }
            return Reply(status: 200, reason: "OK", body: "shutdown now\n", followUp: .requestShutdown)
        case "/debug/fault":
            // Off unless ZTUNNEL_DEBUG_FAULT_INJECTION=true: tests use it to prove the sandbox and
            // the IPC checks; it must not exist for an attacker on the node otherwise.
            guard state.configuration.bool("ZTUNNEL_DEBUG_FAULT_INJECTION") else {
                return Reply(status: 404, reason: "Not Found", body: "not found\n")
            }
            guard method == "POST" else { return Reply(status: 405, reason: "Method Not Allowed", body: "use POST\n") }
            var port: UInt16 = 0
            if let text = query["port"] {
                guard let value = UInt16(text) else { return Reply(status: 400, reason: "Bad Request", body: "port must be 0-65535\n") }
                port = value
            }
            // The NetWorker's wall probes, tried in the CertWorker or the xDS worker (relayed).
            if let name = query["kind"], let relayed = FaultKind(probeName: name) {
                return Reply(status: 200, reason: "OK", body: "injecting \(name)\n", followUp: .relayFault(relayed, port: port))
            }
            guard let kind = query["kind"].flatMap(FaultInjection.Kind.init(rawValue:)) else {
                let walls = FaultKind.Wall.allCases.map(\.rawValue).joined(separator: "|")
                let kinds = FaultInjection.Kind.allCases.map(\.rawValue).joined(separator: ", ")
                return Reply(status: 400, reason: "Bad Request", body: "kind must be one of \(kinds), or cert-/xds- and one of \(walls)\n")
            }
            return Reply(status: 200, reason: "OK", body: "injecting \(kind.rawValue)\n", followUp: .injectFault(kind, port: port))
        default:
            return Reply(status: 404, reason: "Not Found", body: "not found\n")
        }
    }
}
