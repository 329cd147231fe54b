// swift-tools-version:6.0
import PackageDescription

// The libFuzzer harness for the IPC decoders, kept out of the main build: it has no main of its
// own (libFuzzer provides it) and links only with -sanitize=fuzzer. `make fuzz` builds and runs it.
let package = Package(
    name: "ztunnel-fuzz",
    dependencies: [.package(name: "ztunnel-swift", path: "..")],
    targets: [
        .executableTarget(name: "IPCFuzz", dependencies: [.product(name: "IPC", package: "ztunnel-swift")]),
    ],
    swiftLanguageModes: [.v5]
)
