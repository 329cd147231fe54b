import NIOCore

extension BoundReporter {
    /// Arms a phase deadline on `channel`: unless cancelled within `milliseconds`, the channel is
    /// closed and the bound reported (once per episode) with the listener and the peer. Used by
    /// every handler with a phase to finish (TLS and SOCKS5 handshakes, captured connects, HTTP
    /// request heads), so each bound is enforced and reported the same way.
    func deadline(_ bound: Bound, on channel: Channel, listener: String, after milliseconds: Int64,
                  detail: String) -> Scheduled<Void> {
        channel.eventLoop.scheduleTask(in: .milliseconds(milliseconds)) {
            guard channel.isActive else { return }
            self.reached(bound, listener: listener, peer: ListenerFactory.peer(channel), detail: detail)
            channel.close(promise: nil)
        }
    }
}
