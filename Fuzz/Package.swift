// swift-tools-version:6.0
import PackageDescription

// The libFuzzer harnesses for the IPC, xDS and CRL decoders, kept out of the main build: it has no main of its
// own (libFuzzer provides it) and links only with -sanitize=fuzzer. `make fuzz` builds and runs it.
let package = Package(
    name: "ztunnel-fuzz",
    dependencies: [
        .package(name: "ztunnel-swift", path: ".."),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    ],
    targets: [
        // libFuzzer's driver, shared by the harnesses.
        .target(name: "FuzzDriver"),
        .executableTarget(name: "IPCFuzz", dependencies: ["FuzzDriver", .product(name: "IPC", package: "ztunnel-swift")]),
        .executableTarget(name: "CRLFuzz", dependencies: ["FuzzDriver", .product(name: "OpenSSLSupport", package: "ztunnel-swift")]),
        .executableTarget(name: "XDSFuzz", dependencies: [
            "FuzzDriver", .product(name: "XDS", package: "ztunnel-swift"), .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
