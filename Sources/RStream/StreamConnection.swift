import RStreamKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public typealias RStreamError = RStreamKernel.RStreamError

/// What a non-blocking send did.
public enum SendResult: Equatable, Sendable {
    /// This many bytes were accepted (perhaps fewer than offered); they stay contiguous in the stream.
    case sent(Int)
    /// Nothing could be accepted now; drive progress and try again.
    case wouldBlock
}

/// What a non-blocking receive found.
public enum ReceiveResult: Equatable, Sendable {
    /// This many bytes (at least one) were received.
    case received(Int)
    /// Nothing is there yet.
    case wouldBlock
    /// The peer sent FIN and every byte before it has been received.
    case endOfStream
}

/// A connected byte stream, used like a TCP socket, whose bytes travel as RMA writes of a libfabric
/// core into a ring the peer registered.
///
/// Progress is manual: the library starts no thread, and work happens inside these calls. A stream
/// nobody drives holds up its peer; call `progress()` when idle for long. Every method may be called
/// from any thread.
public final class StreamConnection: Sendable {
    private let engine: Mutex<FabricStreamEngine?>
    public let options: StreamOptions

    init(engine: consuming sending FabricStreamEngine, options: StreamOptions) {
        self.engine = Mutex(Optional(engine))
        self.options = options
    }

    deinit {
        engine.withLock { engine in
            engine?.disconnect()
            engine = nil
        }
    }

    /// Connects to `host:port` (IPv4, IPv6 or a name). Nothing listening (`.connectionRefused`), a
    /// refusal with a reason (`.rejected`), an unreachable host (`.unreachable`) and the timeout
    /// passing (`.timedOut`) are distinct errors.
    public static func connect(
        host: String, port: UInt16, options: StreamOptions = StreamOptions(), timeout: Duration? = .seconds(10)
    ) throws(RStreamError) -> StreamConnection {
        try options.validate()
        let engine = try ActiveConnector.connect(
            host: host, port: port, shape: options.shape, requirements: options.requirements,
            deadline: timeout.map { ContinuousClock.now + $0 })
        return StreamConnection(engine: engine, options: options)
    }

    private static let closedError = RStreamError(.closed, code: 9, "the stream is closed")

    private func withEngine<R: Sendable>(_ body: (inout FabricStreamEngine) throws(RStreamError) -> R) throws(RStreamError) -> R {
        try engine.withLock { (engine: inout FabricStreamEngine?) throws(RStreamError) -> R in
            guard engine != nil else { throw Self.closedError }
            return try body(&engine!)
        }
    }

    /// Retries `attempt` until it yields: busy-polls for the options' window, then sleeps in short
    /// steps, watching for the peer's disconnect.
    private func block<R: Sendable>(
        deadline: ContinuousClock.Instant? = nil,
        _ attempt: (inout FabricStreamEngine) throws(RStreamError) -> R?
    ) throws(RStreamError) -> R {
        let clock = ContinuousClock()
        let busyUntil = clock.now + options.busyPollWindow
        var round = 0
        while true {
            let sleeping = round > 0 && clock.now >= busyUntil
            if let value = try withEngine({ (engine) throws(RStreamError) -> R? in
                if sleeping || round & 63 == 63 { engine.pollConnectionEvents() }
                return try attempt(&engine)
            }) {
                return value
            }
            if let deadline, clock.now >= deadline {
                throw RStreamError(.timedOut, code: 110, "the stream did not become ready in time")
            }
            round += 1
            if sleeping { usleep(round < 4096 ? 10 : 100) }
        }
    }

    // MARK: Sending

    /// Accepts as many of `bytes` as fit now, without blocking.
    public func trySend(_ bytes: some Collection<UInt8>) throws(RStreamError) -> SendResult {
        let n = try withEngine { (engine) throws(RStreamError) in try engine.send(contentsOf: bytes) }
        return n > 0 || bytes.isEmpty ? .sent(n) : .wouldBlock
    }

    /// Blocks until at least one byte of `bytes` is accepted; returns how many were.
    public func send(_ bytes: some Collection<UInt8>) throws(RStreamError) -> Int {
        guard !bytes.isEmpty else { return 0 }
        return try block { (engine) throws(RStreamError) -> Int? in
            let n = try engine.send(contentsOf: bytes)
            return n > 0 ? n : nil
        }
    }

    /// Blocks until every byte of `bytes` is accepted.
    public func sendAll<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(RStreamError) {
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = try send(rest)
            rest = rest.dropFirst(n)
        }
    }

    /// Zero-copy send: `body` gets the part of the registered send ring one write can carry now
    /// (empty when sending would block), fills a prefix and returns its length, which is then
    /// written to the peer. The pointer must not escape `body`.
    public func withSendBuffer(_ body: (UnsafeMutableRawBufferPointer) -> Int) throws(RStreamError) -> SendResult {
        let n = try withEngine { (engine) throws(RStreamError) in try engine.withWritableBytes(body) }
        return n > 0 ? .sent(n) : .wouldBlock
    }

    /// FI_PEEK on send: how many bytes a send could take now, after driving progress.
    public var writableBytes: Int {
        (try? withEngine { engine in
            engine.progress()
            return engine.writableCount
        }) ?? 0
    }

    // MARK: Receiving

    /// Receives into the front of `buffer` without blocking.
    public func tryReceive<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> ReceiveResult {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        let outcome = try withEngine { (engine) throws(RStreamError) in try engine.receive(into: &buffer) }
        return Self.result(outcome)
    }

    /// Blocks until bytes arrive; returns how many were written to the front of `buffer`, or 0 at
    /// end of stream. A reset or protocol error is thrown once the bytes before it have been read.
    public func receive<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> Int {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        return try block { (engine) throws(RStreamError) -> Int? in
            switch try engine.receive(into: &buffer) {
            case .bytes(let n): return n
            case .endOfStream: return 0
            case .wouldBlock: return nil
            }
        }
    }

    /// Blocks until bytes arrive and returns up to `maxBytes` of them; empty at end of stream.
    public func receive(maxBytes: Int) throws(RStreamError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        let n = try receive(into: &buffer)
        buffer.removeSubrange(n...)
        return buffer
    }

    /// Zero-copy receive: `body` gets the received bytes lying contiguous in the receive ring and
    /// returns how many it consumed. The pointer must not escape `body`.
    public func withReceivedBytes(_ body: (UnsafeRawBufferPointer) -> Int) throws(RStreamError) -> ReceiveResult {
        let outcome = try withEngine { (engine) throws(RStreamError) in try engine.withReadableBytes(body) }
        return Self.result(outcome)
    }

    /// FI_PEEK on receive: how many bytes can be read now without consuming them, after driving progress.
    public var readableBytes: Int {
        (try? withEngine { engine in
            engine.progress()
            return engine.readableCount
        }) ?? 0
    }

    private static func result(_ outcome: ReceiveOutcome) -> ReceiveResult {
        switch outcome {
        case .bytes(let n): return .received(n)
        case .wouldBlock: return .wouldBlock
        case .endOfStream: return .endOfStream
        }
    }

    // MARK: Progress and close

    /// Drives progress without sending or receiving: completions, credit returns, the FIN.
    public func progress() {
        _ = try? withEngine { engine in
            engine.progress()
            engine.pollConnectionEvents()
        }
    }

    /// Sends FIN after every byte already accepted; the peer reads end of stream after them. Later
    /// sends fail with `.closed`; receiving goes on.
    public func shutdown() throws(RStreamError) {
        try withEngine { engine in engine.shutdown() }
    }

    /// Blocks until every byte accepted so far and the FIN (if sent) have left this side.
    public func flush(timeout: Duration? = nil) throws(RStreamError) {
        _ = try block(deadline: timeout.map { ContinuousClock.now + $0 }) { (engine) throws(RStreamError) -> Bool? in
            engine.progress()
            if let failure = engine.failure { throw failure }
            return engine.isQuiescent && (!engine.isShutdown || engine.hasSentFin) ? true : nil
        }
    }

    /// Sends FIN if not yet sent, waits up to `linger` for it and every write to leave, ends the
    /// core connection and frees the rings, registrations and queues.
    public func close(linger: Duration = .seconds(2)) {
        _ = try? shutdown()
        _ = try? flush(timeout: linger)
        engine.withLock { engine in
            engine?.disconnect()
            engine = nil
        }
    }
}

extension StreamOptions {
    var shape: EndpointShape {
        EndpointShape(sendRingSize: sendRingSize, receiveRingSize: receiveRingSize, txQueueSize: txQueueSize,
                      rxCredits: rxCredits, iwarp: iwarp)
    }

    var requirements: CoreRequirements { CoreRequirements(provider: provider, iwarp: iwarp) }
}
