// swift-tools-version:6.1
// A package of its own, so that RStream's users never build the benchmark harness.
import PackageDescription

let package = Package(
    name: "RStreamBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named, because a path dependency is otherwise known by its folder, which differs per clone.
        .package(name: "RStream", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "RStreamBenchmarks",
            dependencies: [
                .product(name: "RStream", package: "RStream"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/RStreamBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
