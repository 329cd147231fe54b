// swift-tools-version:6.0
import PackageDescription

// Three executables, one per process role (DESIGN.md): each links only what its role needs.
// A role never imports another role; what they share lives in IPC and Shared.
let package = Package(
    name: "ztunnel-swift",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "ztunnel", targets: ["Supervisor"]),
        .executable(name: "ztunnel-cert-worker", targets: ["CertWorker"]),
        .executable(name: "ztunnel-net-worker", targets: ["NetWorker"]),
        .executable(name: "ztunnel-xds-worker", targets: ["XDSWorker"]),
        // For the libFuzzer package in Fuzz/.
        .library(name: "IPC", targets: ["IPC"]),
        .library(name: "XDS", targets: ["XDS"]),
        .library(name: "OpenSSLSupport", targets: ["OpenSSLSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    ],
    targets: [
        // System libraries, found through pkg-config.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCap", pkgConfig: "libcap", providers: [.apt(["libcap-dev"])]),
        // One-line C functions for macros and variadic calls Swift cannot import.
        .target(name: "CShims"),

        .target(name: "Shared", dependencies: ["CShims", "CSeccomp", "CCap"]),
        // The mesh model (workloads, services, policies) and L4 authorization: pure Swift, no
        // imports, shared by the data plane and the sources that fill it.
        .target(name: "Mesh"),
        .target(name: "IPC", dependencies: ["Shared", "CShims"]),
        // istiod's resources (proto/*.proto, generated into Generated/ by scripts/gen-proto.sh)
        // and their conversion into the mesh model, for the xDS worker to come (issue #8).
        .target(name: "XDS", dependencies: ["Mesh", "Shared", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // Public-key material and TLS plumbing over OpenSSL, for the CertWorker and NetWorker.
        .target(name: "OpenSSLSupport", dependencies: ["COpenSSL", "CShims", "Shared"]),
        // The key-handle OpenSSL provider: a NetWorker's TLS signs through the CertWorker.
        .target(name: "CKeyHandle", dependencies: ["COpenSSL"], linkerSettings: [.linkedLibrary("crypto")]),

        .executableTarget(name: "Supervisor", dependencies: ["IPC", "Shared", "CShims", "Mesh"]),
        // The HTTP/2 client to istiod (TLS on OpenSSL, HTTP/2 on nghttp2): the CA's unary calls and
        // the xDS worker's ADS stream.
        .target(name: "HTTP2Client", dependencies: ["COpenSSL", "CNghttp2", "CShims", "OpenSSLSupport", "Shared"]),

        .executableTarget(name: "CertWorker", dependencies: ["IPC", "Shared", "COpenSSL", "CShims", "OpenSSLSupport", "HTTP2Client"]),
        .executableTarget(name: "XDSWorker", dependencies: ["IPC", "Shared", "CShims", "HTTP2Client", "XDS", "Mesh",
                                                         .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .executableTarget(
            name: "NetWorker",
            dependencies: [
                "IPC", "Shared", "Mesh", "XDS", "CShims", "CNghttp2", "COpenSSL", "OpenSSLSupport", "CKeyHandle",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),

        .testTarget(name: "IPCTests", dependencies: ["IPC", "Shared"]),
        .testTarget(name: "SharedTests", dependencies: ["Shared"]),
        .testTarget(name: "MeshTests", dependencies: ["Mesh"]),
        .testTarget(name: "XDSTests", dependencies: ["XDS", "Mesh", "HTTP2Client", "Shared", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .testTarget(name: "SupervisorTests", dependencies: ["Supervisor"]),
        .testTarget(name: "CertWorkerTests", dependencies: ["CertWorker", "IPC", "OpenSSLSupport", "COpenSSL", "HTTP2Client", "CKeyHandle"]),
        .testTarget(name: "NetWorkerTests", dependencies: [
            "NetWorker", "IPC", "Shared", "OpenSSLSupport", "COpenSSL", "CKeyHandle",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
