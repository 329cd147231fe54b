import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The NetWorker's end of its signer channel to the CertWorker. A reader thread takes the
/// CertWorker's identity pushes and sign replies; `sign` sends a request and waits for its reply
/// with a deadline. Replies are matched by request id; a late reply finds nobody waiting and is
/// dropped (relayd `ca.c`).
///
/// Handshakes sign asynchronously (`signAsync`, SSL_MODE_ASYNC): the event loop never waits for
/// the round trip. `sign` blocks, for a signature needed outside an ASYNC_JOB.
final class SignerClient: @unchecked Sendable {
    private let condition = MonotonicCondition()
    private var channel: IPCSocket?
    private var generation = 0
    private var nextRequestId: UInt32 = 1
    private var replies: [UInt32: CertWorkerMessage] = [:]
    private var waiting: Set<UInt32> = []
    /// Asynchronous requests: the completion runs on the reader thread.
    private var completions: [UInt32: ([UInt8]?) -> Void] = [:]
    /// The identities this NetWorker wants certificates for; sent on every (re)attach.
    private var wanted: [String] = []
    /// Fault injection only: the reader stops taking frames from this channel generation.
    private var stalledGeneration: Int?

    /// Called on the reader thread for each identity the CertWorker pushes. Set before `attach`.
    var onIdentity: (@Sendable (IdentityMaterial) -> Void)?
    /// Called when a new signer channel is attached, before its reader starts. Set before `attach`.
    var onAttach: (@Sendable () -> Void)?
    /// Called on the reader thread when the CertWorker withdraws an identity. Set before `attach`.
    var onWithdraw: (@Sendable (String) -> Void)?
    /// Called on the reader thread with the CertWorker's certificate states. Set before `attach`.
    var onStatus: (@Sendable ([CertificateStatus]) -> Void)?

    init() {}

    /// Adopts a new channel (the CertWorker was replaced, or this is the first) and starts its
    /// reader thread. Requests waiting on the old channel fail at their deadline.
    func attach(_ socket: IPCSocket) {
        // The handles we hold name keys of the CertWorker at the other end of the old channel: a
        // new CertWorker knows none of its predecessor's issued keys (issue #6 review: handshakes
        // with stale handles drew refusals until the channel was cut). It pushes what it has.
        onAttach?()
        let (myGeneration, wanted) = condition.withLock { () -> (Int, [String]) in
            channel = socket
            generation += 1
            return (generation, self.wanted)
        }
        sendWant(wanted, on: socket)
        let box = Unmanaged.passRetained(ReaderContext(client: self, socket: socket, generation: myGeneration))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let context = Unmanaged<ReaderContext>.fromOpaque(raw).takeRetainedValue()
            context.client.readLoop(context.socket, generation: context.generation)
            return nil
        }, box.toOpaque())
        if rc == 0 { pthread_detach(thread) } else { box.release(); Log.error("cannot start the signer reader thread: \(rc)") }
    }

    /// Replaces the list of wanted identities and tells the CertWorker, if attached.
    func want(_ identities: [String]) {
        let socket = condition.withLock { () -> IPCSocket? in
            wanted = identities
            return channel
        }
        if let socket { sendWant(identities, on: socket) }
    }

    private func sendWant(_ identities: [String], on socket: IPCSocket) {
        do { try socket.send(SignerRequest.want(identities: identities).frame(requestId: 0), blocking: false) } catch {
            Log.warn("cannot send wanted identities to the CertWorker: \(error)")
        }
    }

    private final class ReaderContext {
        let client: SignerClient
        let socket: IPCSocket
        let generation: Int
        init(client: SignerClient, socket: IPCSocket, generation: Int) {
            self.client = client
            self.socket = socket
            self.generation = generation
        }
    }

    private func readLoop(_ socket: IPCSocket, generation: Int) {
        while true {
            condition.withLock {
                _ = condition.wait(until: .max / 2) { stalledGeneration != generation || self.generation != generation }
            }
            do {
                guard case .frame(let frame) = try socket.receive() else { continue }
                let message = try CertWorkerMessage.decode(frame)
                switch message {
                case .identity(let material):
                    onIdentity?(material)
                case .status(let entries):
                    onStatus?(entries)
                case .withdraw(let spiffeId):
                    onWithdraw?(spiffeId)
                case .signature, .signRefused:
                    let completion = condition.withLock { () -> (([UInt8]?) -> Void)? in
                        if waiting.contains(frame.requestId) {
                            replies[frame.requestId] = message
                            condition.broadcast()
                        }
                        return completions.removeValue(forKey: frame.requestId)
                    }
                    if let completion {
                        if case .signature(let signature) = message { completion(signature) } else {
                            if case .signRefused(let reason) = message { Log.warn("the CertWorker refused a sign request: \(reason)") }
                            completion(nil)
                        }
                    }
                }
            } catch {
                // Closed (the CertWorker exited) or bad bytes from it: stop using this channel.
                // The Supervisor hands over a new one when the CertWorker is back.
                Log.info("signer channel ended: \(error)")
                condition.withLock { if self.generation == generation { channel = nil } }
                return
            }
        }
    }

    /// Fault injection only (ZTUNNEL_DEBUG_FAULT_INJECTION): a NetWorker that stops reading its
    /// signer channel (the reader parks after the frame it is waiting for), then sends up to
    /// `count` sign requests, waiting for room, until the channel is cut. Returns how many went.
    func stallForFaultInjection(handle: [UInt8], content: [UInt8], upTo count: Int) -> Int {
        guard let channel = condition.withLock({ () -> IPCSocket? in
            stalledGeneration = generation
            return self.channel
        }) else { return 0 }
        let request = SignerRequest.sign(handle: handle, algorithm: SignatureAlgorithm.ecdsaP256SHA256.rawValue, content: content)
        for sent in 0..<count {
            do { try channel.send(request.frame(requestId: 0x8000_0000 | UInt32(sent))) } catch { return sent }
        }
        return count
    }

    /// Fault injection only (ZTUNNEL_DEBUG_FAULT_INJECTION): bytes as they are, on the channel.
    func sendRawForFaultInjection(_ bytes: [UInt8]) {
        let channel = condition.withLock { self.channel }
        try? channel?.sendRaw(bytes, blocking: false)
    }

    /// Sends a sign request without waiting; `completion` runs on the reader thread with the
    /// signature, or nil on refusal. Returns the request id (for `cancel`), or nil when there is
    /// no channel or the request could not be queued.
    func signAsync(handle: [UInt8], content: [UInt8], completion: @escaping ([UInt8]?) -> Void) -> UInt32? {
        // Registered before sending (the reply can be quick); sent outside the lock, which the
        // reader thread needs to deliver replies.
        let (channel, requestId) = condition.withLock { () -> (IPCSocket?, UInt32) in
            let requestId = nextRequestId
            nextRequestId = nextRequestId &+ 1
            completions[requestId] = completion
            return (self.channel, requestId)
        }
        guard let channel, send(handle: handle, content: content, requestId: requestId, on: channel) else {
            condition.withLock { completions[requestId] = nil }
            return nil
        }
        return requestId
    }

    /// Queues one sign request without waiting: when the CertWorker is so far behind that its
    /// queue is full, this handshake fails rather than an event loop stopping for all the others.
    private func send(handle: [UInt8], content: [UInt8], requestId: UInt32, on channel: IPCSocket) -> Bool {
        do {
            try channel.send(SignerRequest.sign(handle: handle, algorithm: SignatureAlgorithm.ecdsaP256SHA256.rawValue,
                                                content: content).frame(requestId: requestId), blocking: false)
            return true
        } catch {
            Log.warn("cannot send a sign request: \(error)")
            return false
        }
    }

    /// Forgets an asynchronous request that missed its deadline: a late reply is dropped.
    func cancel(_ requestId: UInt32) {
        condition.withLock { completions[requestId] = nil }
    }

    /// Signs a TLS 1.3 CertificateVerify content with the key named by `handle`, waiting; nil on refusal, a closed
    /// channel or a missed deadline (the handshake then fails, and the reason is logged). Only for
    /// a handshake outside an ASYNC_JOB.
    func sign(handle: [UInt8], content: [UInt8], timeoutMilliseconds: Int64 = 2000) -> [UInt8]? {
        let (channel, requestId) = condition.withLock { () -> (IPCSocket?, UInt32) in
            let requestId = nextRequestId
            nextRequestId = nextRequestId &+ 1
            waiting.insert(requestId)
            return (self.channel, requestId)
        }
        return condition.withLock {
            defer { waiting.remove(requestId); replies[requestId] = nil }
            guard let channel else {
                Log.warn("sign request without a signer channel (CertWorker not attached)")
                return nil
            }
            // Queued with the lock held is safe here: the send never waits.
            guard send(handle: handle, content: content, requestId: requestId, on: channel) else { return nil }
            let deadline = Clock.monotonicMilliseconds() + timeoutMilliseconds
            guard condition.wait(until: deadline, for: { replies[requestId] != nil }) else {
                Log.warn("sign request \(requestId) timed out after \(timeoutMilliseconds) ms")
                return nil
            }
            switch replies[requestId] {
            case .signature(let signature): return signature
            case .signRefused(let reason):
                Log.warn("the CertWorker refused a sign request: \(reason)")
                return nil
            default: return nil
            }
        }
    }
}
