/// Groups nghttp2's output into TLS records: frames smaller than half a record (HEADERS,
/// WINDOW_UPDATE, SETTINGS, a short DATA) are gathered and sealed together, up to a record's
/// plaintext; a larger frame (a full DATA frame) is sealed on its own, after whatever was
/// gathered before it. Output order is input order, always: HTTP/2 frames must not overtake one
/// another (a DATA frame ahead of its stream's HEADERS is a connection error at the peer).
struct RecordBatcher {
    /// The plaintext of a full TLS record.
    static let recordPlaintext = 16 * 1024

    private var gathered: [UInt8] = []

    /// Takes one chunk of nghttp2's output; `seal` is called for each record, in order. False
    /// when `seal` failed (the connection is then to be closed).
    mutating func add(_ bytes: UnsafeRawBufferPointer, seal: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        if bytes.count >= Self.recordPlaintext / 2 {
            return finish(seal: seal) && seal(bytes)
        }
        if gathered.count + bytes.count > Self.recordPlaintext, !finish(seal: seal) { return false }
        gathered.append(contentsOf: bytes)
        return true
    }

    /// Seals what was gathered, if anything.
    mutating func finish(seal: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        guard !gathered.isEmpty else { return true }
        defer { gathered.removeAll(keepingCapacity: true) }
        return gathered.withUnsafeBytes { seal($0) }
    }
}
