import Foundation
import RStream
@_spi(Benchmarks) @testable import RStreamKernel
import Testing

/// Expects `body` to throw an `RStreamError` of `kind` whose context contains `text`.
func expectError(
    _ kind: RStreamError.Kind, containing text: String = "", sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected \(kind) error containing \"\(text)\", nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as RStreamError {
        #expect(error.kind == kind && (text.isEmpty || error.context.contains(text)), "got \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected an RStreamError, got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct OptionTests {
    static let bad: [(String, @Sendable (inout StreamOptions) -> Void, String)] = [
        ("send ring below", { $0.sendRingSize = 4095 }, "send ring size 4095 is outside 4096...1048575"),
        ("send ring above", { $0.sendRingSize = 1 << 20 }, "send ring size 1048576 is outside 4096...1048575"),
        ("recv ring below", { $0.receiveRingSize = 0 }, "receive ring size 0 is outside 4096...1048575"),
        ("recv ring above", { $0.receiveRingSize = 1 << 20 }, "receive ring size 1048576 is outside"),
        ("tx below", { $0.txQueueSize = 7 }, "tx queue size 7 is outside 8...65536"),
        ("tx above", { $0.txQueueSize = 65537 }, "tx queue size 65537 is outside 8...65536"),
        ("rx below", { $0.rxCredits = 3 }, "rx credits 3 is outside 4...511"),
        ("rx above", { $0.rxCredits = 512 }, "rx credits 512 is outside 4...511"),
        ("busy poll", { $0.busyPollWindow = .seconds(2) }, "busy-poll window"),
        ("busy poll negative", { $0.busyPollWindow = .microseconds(-1) }, "busy-poll window"),
        ("provider empty", { $0.provider = "" }, "is not a core provider"),
        ("provider layered", { $0.provider = "tcp;ofi_rxm" }, "is not a core provider"),
    ]

    @Test(arguments: bad)
    func everyBadOptionIsNamedWithItsRange(name: String, change: @Sendable (inout StreamOptions) -> Void, message: String) {
        var options = StreamOptions()
        change(&options)
        expectError(.invalidOption, containing: message) { try options.validate() }
        expectError(.invalidOption, containing: message) {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: 1, options: options)
        }
        expectError(.invalidOption, containing: message) {
            _ = try StreamListener(host: "127.0.0.1", port: 0, options: options)
        }
    }

    @Test func limitsAreAccepted() throws {
        var options = StreamOptions()
        options.sendRingSize = 4096; options.receiveRingSize = (1 << 20) - 1
        options.txQueueSize = 8; options.rxCredits = 511; options.busyPollWindow = .zero
        try options.validate()
        options.rxCredits = 4; options.txQueueSize = 65536; options.busyPollWindow = .seconds(1)
        try options.validate()
        expectError(.invalidOption, containing: "backlog") { _ = try StreamListener(backlog: 0) }
    }

    @Test func anAbsentProviderIsNoProvider() {
        var options = loopbackOptions()
        options.provider = "no-such-core"
        expectError(.noProvider) { _ = try StreamListener(host: "127.0.0.1", options: options) }
    }
}

@Suite struct ConnectErrorTests {
    @Test func nothingListeningIsRefused() throws {
        let port = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions()).port // closed again at once
        expectError(.connectionRefused, containing: "nothing is listening") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions(), timeout: .seconds(5))
        }
    }

    @Test func aListenerThatNeverAcceptsTimesOut() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        expectError(.timedOut, containing: "timed out") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .milliseconds(300))
        }
    }

    @Test func anUnresolvableHostIsUnreachable() {
        expectError(.unreachable) {
            _ = try StreamConnection.connect(host: "no-such-host.invalid", port: 9, options: loopbackOptions(), timeout: .seconds(5))
        }
    }

    @Test func aModeMismatchIsRejectedWithTheReason() throws {
        var iwarp = loopbackOptions()
        iwarp.iwarp = true
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: iwarp)
        let server = Background { () throws -> String in
            do {
                _ = try listener.accept(timeout: .seconds(10))
                return "accepted"
            } catch let error as RStreamError {
                return "\(error.kind): \(error.context)"
            }
        }
        expectError(.rejected, containing: "asks for normal mode") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(10))
        }
        #expect(try server.value().hasPrefix("protocolViolation: refused a connection request"))
    }

    @Test(arguments: ["::1", "localhost"])
    func ipv6AndNames(host: String) throws {
        let listener = try StreamListener(host: host, port: 0, options: loopbackOptions())
        let server = Background { () throws -> [UInt8] in
            let stream = try listener.accept(timeout: .seconds(10))
            defer { stream.close() }
            return try stream.receive(maxBytes: 10)
        }
        let client = try StreamConnection.connect(host: host, port: listener.port, options: loopbackOptions())
        try client.sendAll([1, 2, 3])
        try client.flush(timeout: .seconds(10))
        #expect(try server.value() == [1, 2, 3])
        client.close()
    }

    @Test func anInjectedRegistrationFailureIsReportedWithItsContext() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        FaultInjection.failNext(.memoryRegister, code: ENOMEM)
        expectError(.fabric, containing: "fi_mr_reg(send ring") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(5))
        }
        FaultInjection.failNext(.enable, code: ENOMEM)
        expectError(.fabric, containing: "fi_enable") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(5))
        }
        FaultInjection.disarm()
    }
}
