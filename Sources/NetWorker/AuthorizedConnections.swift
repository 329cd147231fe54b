import Mesh
import NIOCore
import Shared

/// The live inbound connections that were authorized, with what they were authorized for, so
/// that a new policy set is applied to them too (ISTIO_COMPAT §10: "whenever the policy set
/// changes, every live inbound connection is re-evaluated and closed if now denied"). Shared by
/// the event loops and the control thread; one lock.
final class AuthorizedConnections: @unchecked Sendable {
    struct Entry {
        let channel: Channel
        let listener: String
        let source: String
        let destination: String
        let port: UInt16
        let identity: String?
    }

    private let lock = Mutex()
    private var entries: [ObjectIdentifier: Entry] = [:]

    var count: Int { lock.withLock { entries.count } }

    /// Remembers an authorized connection until it closes.
    func register(_ entry: Entry) {
        let key = ObjectIdentifier(entry.channel)
        lock.withLock { entries[key] = entry }
        entry.channel.closeFuture.whenComplete { _ in self.lock.withLock { self.entries[key] = nil } }
    }

    /// Decides every live connection again with `authorization` (which reads the new model) and
    /// closes the ones now denied. Returns how many were closed.
    @discardableResult
    func recheck(with authorization: InboundAuthorization) -> Int {
        let live = lock.withLock { Array(entries.values) }
        var closed = 0
        for entry in live {
            // A destination whose workload is gone is denied too: nothing allows it any more.
            guard case .denied(let reason, let policy, _) = authorization.check(
                source: entry.source, destination: entry.destination, port: entry.port, identity: entry.identity) else { continue }
            Log.info("\(entry.listener): connection closed due to policy change",
                     [("src", entry.source), ("dst", "\(entry.destination):\(entry.port)"), ("policy", policy ?? "none"),
                      ("reason", reason)])
            entry.channel.close(promise: nil)
            closed += 1
        }
        return closed
    }
}
