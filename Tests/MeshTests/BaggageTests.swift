import Mesh
import Testing

/// The source a `baggage` header describes (ISTIO_COMPAT §10: a client behind a network gateway):
/// what `baggage(for:)` writes reads back, unknown items are ignored, and no namespace means none.
@Suite struct BaggageTests {
    @Test func whatWeWriteReadsBack() {
        var workload = Workload(uid: "u", namespace: "default")
        workload.clusterId = "east-cluster"
        workload.workloadType = .cronjob
        workload.workloadName = "nightly"
        workload.canonicalName = "nightly-svc"
        workload.canonicalRevision = "v2"
        workload.locality = Locality(region: "eu", zone: "eu-a")
        let baggage = workload.baggage
        let read = Workload(baggage: baggage, network: "east")
        #expect(read?.namespace == "default")
        #expect(read?.clusterId == "east-cluster")
        #expect(read?.workloadType == .cronjob)
        #expect(read?.workloadName == "nightly" && read?.name == "nightly")
        #expect(read?.canonicalName == "nightly-svc" && read?.canonicalRevision == "v2")
        #expect(read?.locality == Locality(region: "eu", zone: "eu-a"))
        #expect(read?.network == "east")
    }

    @Test func oddInputIsIgnoredOrRefused() {
        #expect(Workload(baggage: "", network: "east") == nil)
        #expect(Workload(baggage: "service.name=x,,=,k8s.widget.name=y,noequals", network: "e") == nil)
        let read = Workload(baggage: " k8s.namespace.name = shop ,k8s.widget.name=y", network: "e")
        #expect(read?.namespace == "shop" && read?.workloadName == "")
        // Too long (in bytes: a combining accent makes one Character of many bytes), or with
        // characters no Kubernetes name has: left out.
        let long = String(repeating: "a", count: 254)
        #expect(Workload(baggage: "k8s.namespace.name=\(long)", network: "e") == nil)
        let accents = "a" + String(repeating: "\u{301}", count: 200)
        #expect(accents.count == 1)
        #expect(Workload(baggage: "k8s.namespace.name=\(accents)", network: "e") == nil)
        let forged = Workload(baggage: "k8s.namespace.name=shop,service.name=x src.identity=spiffe://evil", network: "e")
        #expect(forged?.namespace == "shop" && forged?.canonicalName == "")
        #expect(Workload(baggage: "k8s.namespace.name=\"shop\"", network: "e") == nil)
    }
}
