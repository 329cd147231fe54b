import Testing
@testable import Mesh

/// The model's hostname index (the pods' DNS proxy looks services up by name): one key per
/// namespace that has the hostname, kept in step with inserts, replacements and removals.
@Suite struct MeshModelIndexTests {
    @Test func servicesAreFoundByHostnameUntilRemoved() {
        var model = MeshModel()
        model.insert(Service(name: "echo", namespace: "shop", hostname: "echo.example"))
        model.insert(Service(name: "echo", namespace: "web", hostname: "echo.example"))
        model.insert(Service(name: "echo", namespace: "shop", hostname: "echo.example"))  // a replacement
        #expect(model.servicesByHostname["echo.example"]?.sorted() == ["shop/echo.example", "web/echo.example"])
        model.removeService(key: "shop/echo.example")
        #expect(model.servicesByHostname["echo.example"] == ["web/echo.example"])
        model.removeService(key: "web/echo.example")
        #expect(model.servicesByHostname["echo.example"] == nil)
    }
}
