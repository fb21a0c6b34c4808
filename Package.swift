// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "RStream",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RStream", targets: ["RStream"]),
        .executable(name: "rstream", targets: ["rstream"]),
        // libfabric loads it from FI_PROVIDER_PATH: the file is librstream-fi.so.
        .library(name: "rstream-fi", type: .dynamic, targets: ["RStreamProvider"]),
        .executable(name: "rstream-cperf", targets: ["rstream-cperf"]),
        .executable(name: "rstream-shmfloor", targets: ["rstream-shmfloor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Layer 0: the C import of libfabric, and the few things it does not import.
        .systemLibrary(
            name: "CLibfabric",
            pkgConfig: "libfabric",
            providers: [.apt(["libfabric-dev"])]
        ),
        .target(name: "CFabricShim"),
        .systemLibrary(name: "CNuma", pkgConfig: "numa", providers: [.apt(["libnuma-dev"])]),
        // What the same-host transport's system calls need that Swift cannot import (SCM_RIGHTS, memfd seals).
        .target(name: "CSameHost"),
        // The copy of bulk bytes into a ring another CPU reads (non-temporal stores).
        .target(name: "CBulkCopy"),
        // Layer 1: the unsafe kernel (rings, word codec, credits, the fabric and same-host transports, progress).
        .target(name: "RStreamKernel", dependencies: ["CLibfabric", "CFabricShim", "CNuma", "CSameHost", "CBulkCopy"]),
        // Layer 2: the safe public API.
        .target(name: "RStream", dependencies: [
            "RStreamKernel",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Layer 2, beside it: the libfabric provider, the face C programs use (fid tables over
        // the kernel; it holds C callers' pointers by necessity).
        .target(name: "CProviderSupport"),
        .target(name: "RStreamProvider", dependencies: ["RStreamKernel", "CProviderSupport", "CLibfabric", "CFabricShim"]),
        // Layer 3: the command, and the C program that measures the provider for `rstream perf`.
        .executableTarget(name: "rstream-cperf", linkerSettings: [.linkedLibrary("fabric")]),
        // The same-host floor `rstream perf` compares with: a bare ping-pong in a shared mapping.
        .executableTarget(name: "rstream-shmfloor"),
        .executableTarget(
            name: "rstream",
            dependencies: [
                "RStream",
                "RStreamKernel", // the raw-core baseline of `rstream perf` only
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The in-memory wire under the engine, for the engine's tests and its fuzzer (no product).
        .target(name: "RStreamFakeWire", dependencies: ["RStreamKernel"]),
        // libFuzzer targets (`make fuzz`); built only with --sanitize=fuzzer, which brings its main.
        .executableTarget(name: "rstream-fuzz", dependencies: ["RStreamKernel", "RStreamFakeWire"]),
        .testTarget(name: "RStreamKernelTests", dependencies: ["RStreamKernel", "RStreamFakeWire", "CLibfabric", "CFabricShim", "CSameHost", "CBulkCopy"]),
        // C programs against the built provider (librstream-fi.so), and against the command.
        .testTarget(name: "ProviderTests", dependencies: ["rstream", "RStreamKernel", "RStreamProvider", "CLibfabric"], exclude: ["C"]),
        // The README's async example, built and run by the tests (ReadmeTests).
        .executableTarget(name: "async-echo-example", dependencies: ["RStream"], path: "Examples/AsyncEcho"),
        .testTarget(name: "RStreamTests", dependencies: [
            "RStream", "RStreamKernel", "CLibfabric", "CFabricShim", "CSameHost", "rstream", "async-echo-example",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
