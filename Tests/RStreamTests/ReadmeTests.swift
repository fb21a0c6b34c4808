import Foundation
import Testing

/// The README's async example is `Examples/AsyncEcho/AsyncEcho.swift`, word for word; the tests build
/// it (a target of the package) and run it here.
@Suite struct ReadmeTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theReadmesAsyncExampleIsTheBuiltOne() throws {
        let readme = try String(contentsOf: Self.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let example = try String(contentsOf: Self.packageRoot.appendingPathComponent("Examples/AsyncEcho/AsyncEcho.swift"), encoding: .utf8)
        #expect(readme.contains("```swift\n" + example + "```"), "README.md must show Examples/AsyncEcho/AsyncEcho.swift as it is")
    }

    @Test func theReadmesAsyncExampleRuns() throws {
        let process = Process()
        process.executableURL = rstreamBinary.deletingLastPathComponent().appendingPathComponent("async-echo-example")
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        // A hang is a failure, not a stuck test run.
        let watchdog = DispatchWorkItem { process.terminate() }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
        defer { watchdog.cancel() }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text == "echoed 14 bytes over shm: hello, streams\n", "\(text)")
    }
}
