import Testing
@testable import Shared

/// RUST_LOG as upstream's chart and operators write it (tracing Targets syntax): a level, or
/// level and target=level items; a value upstream accepts must not stop our daemon from starting.
@Suite struct LogDirectivesTests {
    @Test func targetsMapOntoOurScopes() throws {
        let directives = try Log.Directives.parse("info,access=debug,ztunnel::proxy=trace,hickory_server::server=off")
        #expect(directives.threshold(for: "supervisor") == .info)
        #expect(directives.threshold(for: "access") == .debug)
        #expect(directives.threshold(for: "net-worker[1]") == .trace)
        #expect(directives.threshold(for: "cert-worker[0]") == .info)
    }

    @Test func theNarrowerTargetWinsWhateverTheOrder() throws {
        let directives = try Log.Directives.parse("ztunnel::xds=debug, ztunnel=warn")
        #expect(directives.threshold(for: "xds-worker[0]") == .debug)
        #expect(directives.threshold(for: "supervisor") == .warn)
        #expect(directives.threshold(for: "access") == .info)
        #expect(try Log.Directives.parse("off").threshold(for: "access") == nil)
    }

    @Test func badItemsAreRefusedWithTheirReason() throws {
        for bad in ["loud", "access=loud", "a b=info", "=info", "info,ztunnel=verbose"] {
            #expect(Log.Directives.problem(with: bad) != nil, "\(bad)")
        }
        #expect(throws: (any Error).self) { try Configuration(environment: ["RUST_LOG": "verbose"], arguments: []) }
        let configuration = try Configuration(environment: ["RUST_LOG": "info,access=debug"], arguments: [])
        #expect(configuration.string("RUST_LOG") == "info,access=debug")
    }
}
