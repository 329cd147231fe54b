import NIOCore
import OpenSSLSupport
import Shared

/// Fired into an HBONE connection's pipeline when new revocation lists name a certificate of
/// its peer's chain: the HTTP/2 session ends every stream (`CERT_REVOKED`) and closes.
struct PeerCertificateRevoked {
    let reason: String
}

/// CRL_PATH in a NetWorker (ISTIO_COMPAT §18): the revocation lists in force, checked against
/// every mTLS peer's verified chain at the end of the handshake (15008's clients, the pool's
/// servers), and the live HBONE connections with their peer's chain, checked again whenever the
/// lists change and closed when now revoked, as upstream does. Counted as
/// `istio_crl_policy_rejections_total` (reporter `destination` for 15008's clients, `source`
/// for the servers we connect to) and `istio_crl_untracked_connections_total` (always 0 here:
/// every accepted connection is tracked, the table is as large as the connections are many).
///
/// The check and the tracking are one step under the lock (`admit`), so new lists either are
/// the ones a handshake is checked against or find it tracked: none slips between the two.
/// Lists that do not parse are refused and the ones in force stay. Until lists that parse are
/// in force (none came yet, or the first did not parse) every peer is refused: CRL_PATH is set,
/// and accepting certificates unchecked would be failing open (upstream does not start then).
final class Revocations: @unchecked Sendable {
    static let shared = Revocations()
    static let maxBytes = RevocationList.maxBytes

    private struct Tracked {
        let channel: Channel
        let chain: [Certificate]
        let reporter: String
        let peer: String
    }

    private let lock = Mutex()
    /// Nil while CRL_PATH is unset (or before its first lists came).
    private var lists: RevocationList?
    /// The first lists did not parse: every peer is refused, for this reason.
    private var refusingAll: String?
    private var enabled = false
    /// Counts every change of `lists` and `refusingAll`: a check made outside the lock counts
    /// only if this did not move meanwhile.
    private var version: UInt64 = 0
    private var tracked: [ObjectIdentifier: Tracked] = [:]
    /// Rejections by reporter. Nothing is ever untracked here, so that family is always 0.
    private let rejections = LabeledCounters<String, UInt64>(maxLabelSets: 2, empty: 0) { "{reporter=\"\($0)\"}" }

    /// CRL_PATH is set: lists will come from the Supervisor before any listener.
    func enable() { lock.withLock { enabled = true } }

    var isEnabled: Bool { lock.withLock { enabled } }

    /// New bytes of CRL_PATH. Returns the number of live connections closed, or throws (the
    /// lists in force stay; with none yet, every peer is refused).
    @discardableResult
    func install(_ bytes: [UInt8]) throws -> (lists: Int, revoked: Int, closed: Int) {
        let parsed: RevocationList
        do { parsed = try RevocationList(parsing: bytes) } catch {
            lock.withLock {
                if lists == nil {
                    refusingAll = "CRL_PATH holds no revocation list that parses (\(error))"
                    version &+= 1
                }
            }
            throw error
        }
        let live = lock.withLock { () -> [Tracked] in
            lists = parsed
            refusingAll = nil
            version &+= 1
            return Array(tracked.values)
        }
        var closed = 0
        for connection in live {
            guard let reason = parsed.revoked(in: connection.chain) else { continue }
            rejections.update(connection.reporter) { $0 += 1 }
            Log.warn("connection closed: the peer's certificate is revoked",
                     [("peer", connection.peer), ("reporter", connection.reporter), ("certificate", reason)])
            connection.channel.pipeline.fireUserInboundEventTriggered(PeerCertificateRevoked(reason: reason))
            closed += 1
        }
        return (parsed.count, parsed.revokedEntries, closed)
    }

    /// At the end of a handshake: checks the peer's verified chain (leaf first) and, when it
    /// passes, tracks `channel` with it until it closes, for the next lists. Returns why the peer
    /// is refused (counted under `reporter`), nil when it passes or CRL_PATH is unset.
    /// The chain is checked outside the lock (a signature check, a first sort of a large list,
    /// a log line must not hold up every event loop) and tracked under it only if the lists did
    /// not change meanwhile; if they did, it is checked again against the new ones. So new lists
    /// either are the ones a connection was checked against or find it tracked.
    func admit(_ channel: Channel?, chain: [Certificate], reporter: String, peer: String) -> String? {
        let key = channel.map(ObjectIdentifier.init)
        while true {
            let (enabled, lists, refusingAll, version) = lock.withLock { (self.enabled, self.lists, self.refusingAll, self.version) }
            guard enabled else { return nil }  // CRL_PATH unset
            var refusal: String?
            if let lists {
                if chain.isEmpty {
                    refusal = "no verified certificate chain to check against the revocation lists"
                } else if let revoked = lists.revoked(in: chain) {
                    refusal = "peer certificate revoked (\(revoked))"
                }
            } else {
                refusal = refusingAll ?? Self.notYet
            }
            if let refusal {
                rejections.update(reporter) { $0 += 1 }
                return refusal
            }
            let tracking = lock.withLock { () -> Bool? in
                guard self.version == version else { return nil }  // new lists meanwhile: again
                guard let key, let channel else { return false }
                tracked[key] = Tracked(channel: channel, chain: chain, reporter: reporter, peer: peer)
                return true
            }
            guard let tracking else { continue }
            if tracking, let key, let channel {
                channel.closeFuture.whenComplete { _ in self.lock.withLock { self.tracked[key] = nil } }
            }
            return nil
        }
    }

    static let notYet = "CRL_PATH is set and no revocation list is in force yet"

    /// Why no peer can be verified now (the readiness page says it), nil when they can.
    var problem: String? { lock.withLock { enabled && lists == nil ? refusingAll ?? Self.notYet : nil } }

    /// Both families, with both reporters, whenever CRL_PATH is set.
    func metricLines() -> [String] {
        guard lock.withLock({ enabled }) else { return [] }
        for reporter in ["destination", "source"] { rejections.update(reporter) { _ in } }
        return rejections.lines([
            ("istio_crl_policy_rejections", "Connections and handshakes refused or closed because a certificate of the peer's chain is revoked.",
             { $0 }),
            ("istio_crl_untracked_connections", "Connections not tracked for revocation (a change of CRL_PATH cannot close them).",
             { _ in 0 }),
        ])
    }
}
