import Foundation
import Logging
import RStream
@_spi(Benchmarks) @testable import RStreamKernel
import Testing

/// A log handler that keeps what it is given.
struct CapturingLogHandler: LogHandler {
    let entries: Locked<[(level: Logger.Level, message: String)]>
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        entries.withLock { $0.append((event.level, event.message.description)) }
    }
}

/// The library logs to the caller's `Logger`: connection events at `.debug`, refused peers and
/// protocol errors at `.warning`, nothing on the data path.
@Suite(.serialized) struct LoggingTests {
    static func capturing() -> (Logger, Locked<[(level: Logger.Level, message: String)]>) {
        let entries = Locked<[(level: Logger.Level, message: String)]>([])
        return (Logger(label: "test", factory: { _ in CapturingLogHandler(entries: entries) }), entries)
    }

    @Test(arguments: LifecycleTests.transports)
    func connectionEventsAreDebugAndTheDataPathLogsNothing(transport: String) throws {
        let (serverLog, serverEntries) = Self.capturing(), (clientLog, clientEntries) = Self.capturing()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: LifecycleTests.options(transport) { $0.logger = serverLog })
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port,
                                                  options: LifecycleTests.options(transport) { $0.logger = clientLog })
        let server = try accepted.value()
        let before = (clientEntries.withLock { $0.count }, serverEntries.withLock { $0.count })
        var buffer = [UInt8](repeating: 0, count: 64)
        for _ in 0..<1000 {
            try client.sendAll(buffer)
            var got = 0
            while got < 64 { got += try server.receive(into: &buffer) }
        }
        #expect(clientEntries.withLock { $0.count } == before.0, "the data path logged")
        #expect(serverEntries.withLock { $0.count } == before.1, "the data path logged")
        client.close()
        server.close()
        listener.close()
        let clientMessages = clientEntries.withLock { $0 }, serverMessages = serverEntries.withLock { $0 }
        #expect(clientMessages.map(\.message) == ["connected", "closed"], "\(clientMessages)")
        #expect(serverMessages.map(\.message) == ["listening", "accepted", "closed", "stopped listening"], "\(serverMessages)")
        #expect((clientMessages + serverMessages).allSatisfy { $0.level == .debug })
    }

    @Test func aRefusedPeerIsAWarning() throws {
        let (log, entries) = Self.capturing()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: LifecycleTests.options("shm") { $0.logger = log })
        let accepting = Background { () -> RStreamError? in
            do { _ = try listener.accept(timeout: .seconds(10)); return nil } catch let error as RStreamError { return error }
        }
        // A request without its segments.
        let reason = try SameHostHostilePeerTests.refusal(port: listener.port, block: HostilePeerTests.block { _ in }, descriptors: [])
        #expect(reason.contains("descriptors"), "\(reason)")
        #expect(try accepting.value()?.kind == .protocolViolation)
        let warnings = entries.withLock { $0.filter { $0.level == .warning } }
        #expect(warnings.count == 1 && warnings[0].message.contains(reason), "\(warnings)")
        listener.close()
    }

    @Test func aProtocolErrorIsAWarning() throws {
        let (log, entries) = Self.capturing()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: LifecycleTests.options("shm") { $0.logger = log })
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        let session = try SameHostHostilePeerTests.connect(port: listener.port)
        let server = try accepted.value()
        session.put(0, sequence: 12345, word: SameHostHostilePeerTests.data1) // a sequence out of range
        var buffer = [UInt8](repeating: 0, count: 16)
        expectError(.protocolViolation, containing: "12345") { _ = try server.receive(into: &buffer) }
        let warnings = entries.withLock { $0.filter { $0.level == .warning } }
        #expect(warnings.count == 1 && warnings[0].message.contains("12345"), "\(entries.withLock { $0 })")
        server.close(linger: .zero)
        listener.close()
    }
}
