/// How the Supervisor relays mesh snapshots from the xDS worker to the NetWorkers (issue #8).
///
/// - It numbers them itself: whatever generation the xDS worker claims, the relayed one is the
///   last plus one, so a (compromised) xDS worker can neither pin nor reuse a generation that the
///   NetWorkers' answers are matched against.
/// - It holds only the latest, and keeps at most one in flight per NetWorker: a burst of pushes
///   cannot fill a NetWorker's channel with descriptors. A NetWorker that answers gets the
///   latest if there is a newer one; the ones in between are skipped (each snapshot is whole).
/// - An answer for anything but the one in flight is a violation.
///
/// `Held` is what is relayed with the number (the sealed memfd); a value here, so the rules are
/// tested without processes.
struct SnapshotRelay<Held> {
    private(set) var latest: (generation: UInt64, held: Held)?
    private var inFlight: [UInt16: UInt64] = [:]
    /// The last generation each NetWorker answered: it is not sent the same one again.
    private var lastAnswered: [UInt16: UInt64] = [:]

    struct OutOfTurn: Error, CustomStringConvertible {
        let answered: UInt64
        let inFlight: UInt64?
        var description: String { "meshApplied \(answered) while \(inFlight.map(String.init) ?? "none") is in flight" }
    }

    /// A new snapshot from the xDS worker: numbered here, and now the one to send.
    mutating func publish(_ held: Held) -> UInt64 {
        let generation = (latest?.generation ?? 0) &+ 1
        latest = (generation, held)
        return generation
    }

    /// The snapshot to send NetWorker `index` now, if any: the latest, when none is in flight
    /// and it has not answered that one already. It is in flight from here until `answered`.
    mutating func take(for index: UInt16) -> (generation: UInt64, held: Held)? {
        guard let latest, inFlight[index] == nil, lastAnswered[index] != latest.generation else { return nil }
        inFlight[index] = latest.generation
        return latest
    }

    /// NetWorker `index` answered `generation`: it must be the one in flight. Afterwards a newer
    /// snapshot, if one came meanwhile, can be taken for it.
    mutating func answered(_ generation: UInt64, by index: UInt16) throws {
        guard inFlight[index] == generation else { throw OutOfTurn(answered: generation, inFlight: inFlight[index]) }
        inFlight[index] = nil
        lastAnswered[index] = generation
    }

    /// The generation in flight to NetWorker `index`, nil when none.
    func inFlight(to index: UInt16) -> UInt64? { inFlight[index] }

    /// NetWorker `index` was replaced: its successor has nothing in flight.
    mutating func forget(_ index: UInt16) {
        inFlight[index] = nil
        lastAnswered[index] = nil
    }
}
