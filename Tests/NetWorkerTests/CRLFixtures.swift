import Foundation

/// The certificates and revocation lists of Tests/fixtures/crl (scripts/make-crl-fixtures.sh).
enum CRLFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures/crl")

    static func text(_ name: String) -> String {
        (try? String(contentsOf: directory.appendingPathComponent(name + ".pem"), encoding: .utf8)) ?? ""
    }

    static var root: String { text("root") }
    static var leaf1: String { text("leaf1") }
    static var leaf2: String { text("leaf2") }
    static var leaf3: String { text("leaf3") }
    static var intermediate: String { text("intermediate") }
    static var rootRevokesLeaf1: String { text("root-revokes-leaf1") }
    static var otherRootRevokesLeaf2: String { text("other-root-revokes-leaf2") }
    static var rootRevokesIntermediate: String { text("root-revokes-intermediate") }
    static var rootRevokesNothing: String { text("root-revokes-nothing") }
    static var rootRevokesLeaf1DER: [UInt8] {
        (try? Data(contentsOf: directory.appendingPathComponent("root-revokes-leaf1.der"))).map { [UInt8]($0) } ?? []
    }
}
