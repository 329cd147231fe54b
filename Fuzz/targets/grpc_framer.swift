/// libFuzzer target for GRPCFramer: istiod's (or a CA's) stream bytes, split anywhere. The first
/// byte picks the message bound and the chunk size. Nothing may trap; each message is within the
/// bound; once the framer refuses, it is refused; and what it returned, framed again, is exactly
/// the bytes it consumed.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let bound = Int(data[0] & 0x3f) * 4
    let chunk = Int(data[0] >> 6) * 7 + 1
    var framer = GRPCFramer(maxMessageBytes: bound)
    var messages: [[UInt8]] = []
    var offset = 0
    while offset < bytes.count {
        let piece = Array(bytes[offset..<min(offset + chunk, bytes.count)])
        offset += piece.count
        do { messages += try framer.append(piece) } catch { return 0 }
    }
    var reframed: [UInt8] = []
    for message in messages {
        if message.count > bound { fatalError("a message of \(message.count) bytes over the bound \(bound)") }
        reframed += GRPCFramer.frame(message)
    }
    if reframed + bytes.suffix(framer.pendingBytes) != bytes { fatalError("the framer lost or invented bytes") }
    return 0
}
