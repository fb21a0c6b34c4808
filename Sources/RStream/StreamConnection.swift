import Logging
import SystemPackage
import RStreamKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public typealias RStreamError = RStreamKernel.RStreamError
public typealias WaitInterest = RStreamKernel.WaitInterest
public typealias NUMAPlacement = RStreamKernel.NUMAPlacement

/// A host (numeric, IPv4 or IPv6) and a port: where one end of a stream is.
public struct StreamAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

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
/// core into a ring the peer registered, or, between two processes of one host, straight into the
/// peer's ring in shared memory (`transport` says which).
///
/// Progress is manual: the library starts no thread, and work happens inside these calls. A stream
/// nobody drives holds up its peer; call `progress()` when idle for long. Every method may be called
/// from any thread.
public final class StreamConnection: Sendable {
    /// The engine, for the stream's whole life: calls work on its own sharded locks, so a sender,
    /// a receiver and a progress driver run at once, and take no lock of the stream's own (a lock
    /// here would be two more locked instructions on every call). `close` ends the connection and
    /// raises `closed`, after which every call reports `.closed`; the rings and registrations are
    /// freed with the stream object, once no call can be using them.
    @usableFromInline let engine: StreamEngine
    @usableFromInline let closed = Atomic<Bool>(false)
    let waitSet: WaitSet?
    public let options: StreamOptions

    init(engine: StreamEngine, options: StreamOptions, event: String) {
        waitSet = engine.transport.waitSet
        self.engine = engine
        self.options = options
        let logger = options.logger
        let metadata = Self.metadata(engine)
        logger.debug("\(event)", metadata: metadata)
        engine.onFailure { error in
            let level: Logger.Level = error.kind == .protocolViolation ? .warning : .debug
            logger.log(level: level, "stream failed: \(error)", metadata: metadata)
        }
    }

    /// A stream's log metadata: what carries it and the peer's address.
    static func metadata(_ engine: StreamEngine) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["transport": "\(engine.transport.name)"]
        if let peer = engine.transport.address(ofPeer: true), !peer.isEmpty,
           let address = peer.withUnsafeBytes({ numericAddress($0.baseAddress!, length: $0.count) }) {
            metadata["peer"] = "\(StreamAddress(host: address.host, port: address.port))"
        }
        return metadata
    }

    /// What carries the stream: "shm" for the same-host transport, else the core provider's name
    /// ("tcp", "verbs", ...).
    public var transport: String { (try? withEngine { $0.transport.name }) ?? "closed" }

    /// This side's address: the core's (for tcp the socket's host and port); over shared memory
    /// the host address the stream was made for, with a port that names this process. Nil once
    /// closed, or where the core does not tell.
    public var localAddress: StreamAddress? { address(ofPeer: false) }

    /// The peer's address, told the same way as `localAddress`.
    public var peerAddress: StreamAddress? { address(ofPeer: true) }

    private func address(ofPeer: Bool) -> StreamAddress? {
        guard let bytes = try? withEngine({ $0.transport.address(ofPeer: ofPeer) }), !bytes.isEmpty else { return nil }
        return bytes.withUnsafeBytes { raw in
            numericAddress(raw.baseAddress!, length: raw.count).map { StreamAddress(host: $0.host, port: $0.port) }
        }
    }

    /// The NUMA node the rings were placed on (nil: no NUMA support here).
    public var ringNode: Int? { (try? withEngine { $0.transport.ringNode }) ?? nil }

    /// The node of every page of the send and receive rings, from `move_pages` (for tests).
    package var ringPageNodes: (send: [Int], receive: [Int]) {
        (try? withEngine { $0.transport.ringPageNodes }) ?? ([], [])
    }

    /// Resident pages of the receive ring (`mincore`: nothing is touched to count them).
    package var receiveRingResidentPages: Int {
        (try? withEngine { $0.receiveRingResidentPages }) ?? -1
    }

    /// The policies that place the rings' pages (for tests).
    package var ringBindings: (send: (mode: Int32, nodes: [Int])?, receive: (mode: Int32, nodes: [Int])?) {
        (try? withEngine { $0.ringBindings }) ?? (nil, nil)
    }

    /// The node of every page of the engine's hot state, from `move_pages` (for tests).
    package var hotStatePageNodes: [Int] { (try? withEngine { $0.hotStatePageNodes }) ?? [] }

    /// A descriptor that `poll()` and `epoll` report readable when the stream may have become
    /// readable or writable, or has a connection event (nil where the core has no wait
    /// descriptors). It is a hint: the pattern is arm, poll, then peek —
    ///
    ///     while stream.readableBytes == 0 {
    ///         if stream.prepareToWait(for: .readable) { poll(&pollfd(fd: stream.descriptor!, ...), 1, -1) }
    ///     }
    /// nil where the transport has none, or where it could not be made now: it is made on first
    /// use (an epoll set of the stream's own descriptors, or the eventfd of a stream sharing its
    /// queues), and none can be when the process has no descriptor left.
    public var descriptor: Int32? {
        guard let fd = waitSet?.descriptor, fd >= 0 else { return nil }
        return fd
    }

    /// The wait set (for tests).
    package var waitSetForTests: WaitSet? { waitSet }

    /// `descriptor` as swift-system's `FileDescriptor` (the stream owns it: do not close it).
    public var fileDescriptor: FileDescriptor? { descriptor.map { FileDescriptor(rawValue: $0) } }

    /// Arms the descriptor: true when the caller may now sleep on it; false when the stream is
    /// already ready for `interest` (or has no descriptor), so the caller should look again.
    /// A wake-up is not readiness: after waking, peek or try the call and arm again. Several threads
    /// waiting on one stream should use `wait(for:timeout:)`, which counts its sleepers.
    public func prepareToWait(for interest: WaitInterest) -> Bool {
        // Armed for anything: the caller may sleep without a timeout, and the peer's heartbeats
        // must then wake it to drive progress.
        (try? withEngine { engine in engine.prepareToWait(for: interest, wakeOn: .anything) }) ?? false
    }

    deinit { engine.disconnect() }

    /// Connects to `host:port` (IPv4, IPv6 or a name). To an address of this host whose listener
    /// serves same-host streams it connects over shared memory, unless `options.provider` names a
    /// core; `options.provider = "shm"` asks for shared memory only. Nothing listening (`.connectionRefused`), a
    /// refusal with a reason (`.rejected`), an unreachable host (`.unreachable`) and the timeout
    /// passing (`.timedOut`) are distinct errors.
    public static func connect(
        host: String, port: UInt16, options: StreamOptions = StreamOptions(), timeout: Duration? = .seconds(10)
    ) throws(RStreamError) -> StreamConnection {
        try options.validate()
        let engine = try StreamConnector.connect(
            host: host, port: port, shape: options.shape, requirements: options.requirements,
            deadline: timeout.map { ContinuousClock.now + $0 })
        return StreamConnection(engine: engine, options: options, event: "connected")
    }

    @usableFromInline static let closedError = RStreamError(.closed, code: 9, "the stream is closed")

    /// Raised by `close` before it rings the descriptor, and read sequentially consistent after
    /// a waiter arms it: either the waiter sees the close, or the ring wakes it.
    var isClosed: Bool { closed.load(ordering: .sequentiallyConsistent) }

    // The hot generic calls are inlinable, so that they specialise for the caller's collection
    // (unspecialised, each call went through value witnesses: ~150 instructions more).
    @inlinable @inline(__always)
    func withEngine<R>(_ body: (StreamEngine) throws(RStreamError) -> R) throws(RStreamError) -> R {
        guard !closed.load(ordering: .acquiring) else { throw Self.closedError }
        return try body(engine)
    }

    /// Retries `attempt` until it yields, through the kernel's one wait (`BlockingWait`): busy-polls
    /// for the options' window, then sleeps on the descriptor. A `close` from another thread ends
    /// it with `.closed`.
    private func block<R>(
        for interest: WaitInterest, deadline: ContinuousClock.Instant? = nil,
        _ attempt: (StreamEngine) throws(RStreamError) -> R?
    ) throws(RStreamError) -> R {
        let engine = engine
        let wait = BlockingWait(deadline: deadline, busyWindow: options.busyPollWindow, waitSet: waitSet,
                                what: "the stream to become ready")
        return try wait.run(
            interruption: { isClosed ? Self.closedError : nil },
            prepare: { engine.prepareToWait(for: interest, sleeper: true, unless: { isClosed }) },
            attempt: { (round) throws(RStreamError) -> R? in
                if round & 63 == 63 { engine.pollConnectionEvents() }
                return try attempt(engine)
            })
    }

    // MARK: Sending

    /// Accepts as many of `bytes` as fit now, without blocking.
    @inlinable
    public func trySend(_ bytes: some Collection<UInt8>) throws(RStreamError) -> SendResult {
        let n = try withEngine { (engine) throws(RStreamError) in try engine.send(contentsOf: bytes) }
        return n > 0 || bytes.isEmpty ? .sent(n) : .wouldBlock
    }

    /// Blocks until at least one byte of `bytes` is accepted; returns how many were.
    public func send(_ bytes: some Collection<UInt8>) throws(RStreamError) -> Int {
        guard !bytes.isEmpty else { return 0 }
        return try block(for: .writable) { (engine) throws(RStreamError) -> Int? in
            let n = try engine.send(contentsOf: bytes)
            return n > 0 ? n : nil
        }
    }

    /// Accepts all of `bytes` in this one call, or none: for records that several threads send on
    /// one stream and that must not be split. The room is checked and the bytes taken in one step
    /// under the stream's send lock, so two senders never interleave. A record larger than the
    /// send ring or the peer's receive ring can never go whole: `writableBytes` bounds it.
    public func trySendWhole(_ bytes: some Collection<UInt8>) throws(RStreamError) -> SendResult {
        let n = try withEngine { (engine) throws(RStreamError) -> Int in try engine.sendWhole(contentsOf: bytes) }
        return n > 0 || bytes.isEmpty ? .sent(n) : .wouldBlock
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
    /// (it is not called when sending would block), fills a prefix and returns its length, which
    /// is then written to the peer. The pointer must not escape `body`.
    public func withSendBuffer(_ body: (UnsafeMutableRawBufferPointer) -> Int) throws(RStreamError) -> SendResult {
        let n = try withEngine { (engine) throws(RStreamError) in try engine.withWritableBytes(body) }
        return n > 0 ? .sent(n) : .wouldBlock
    }

    /// `withSendBuffer` whose `body` may throw and returns a value of its own beside the count it
    /// filled (as swift-nio's `withUnsafe…` do). If `body` throws, nothing is sent and its error
    /// is rethrown; an error of the stream is thrown as an `RStreamError`. `value` is nil when
    /// `body` was not called (sending would block).
    public func withSendBuffer<Value>(
        _ body: (UnsafeMutableRawBufferPointer) throws -> (count: Int, value: Value)
    ) throws -> (result: SendResult, value: Value?) {
        var outcome: Result<Value, any Error>?
        let result = try withSendBuffer { region in Self.count(of: { try body(region) }, keeping: &outcome) }
        return (result, try outcome?.get())
    }

    /// Runs a zero-copy body that may throw: its count (0 when it threw: nothing is taken), its
    /// value or error kept in `outcome`.
    private static func count<Value>(of body: () throws -> (Int, Value), keeping outcome: inout Result<Value, any Error>?) -> Int {
        do {
            let (count, value) = try body()
            outcome = .success(value)
            return count
        } catch {
            outcome = .failure(error)
            return 0
        }
    }

    /// FI_PEEK on send: how many bytes a send could take now, after driving progress.
    public var writableBytes: Int {
        (try? withEngine { engine in
            engine.progress()
            return engine.writableCount
        }) ?? 0
    }

    // MARK: Receiving

    /// Receives into the front of `buffer` without blocking. Pass a whole array, or an unsafe
    /// buffer: `&array[range]` makes Swift copy the array on write (the whole of it) each call.
    @inlinable
    public func tryReceive<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> ReceiveResult {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        let outcome = try withEngine { (engine) throws(RStreamError) in try engine.receive(into: &buffer) }
        return Self.result(outcome)
    }

    /// Receives exactly `buffer.count` bytes in this one call, or none (would block until that many
    /// have arrived): for records that several threads receive from one stream. At the end of the
    /// stream it reports `.endOfStream` as soon as that many can no longer come, even while a
    /// shorter tail is still readable: `readableBytes` tells how long, `tryReceive(into:)` hands
    /// it out. A failure is thrown the same way, once no whole record can come.
    public func tryReceive(exactly buffer: inout [UInt8]) throws(RStreamError) -> ReceiveResult {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        let outcome = try withEngine { (engine) throws(RStreamError) -> ReceiveOutcome in
            try engine.receive(exactlyInto: &buffer)
        }
        return Self.result(outcome)
    }

    /// Blocks until the stream is ready for `interest` (busy-polling for the window, then sleeping
    /// on the descriptor); false if `timeout` passed first.
    public func wait(for interest: WaitInterest, timeout: Duration? = nil) throws(RStreamError) -> Bool {
        do {
            return try block(for: interest, deadline: timeout.map { ContinuousClock.now + $0 }) { (engine) -> Bool? in
                engine.progressAndCheck(readyFor: interest) ? true : nil
            }
        } catch where error.kind == .timedOut {
            return false
        }
    }

    /// Blocks until bytes arrive; returns how many were written to the front of `buffer`, or 0 at
    /// end of stream. A reset or protocol error is thrown once the bytes before it have been read
    /// (a reset that comes after the peer's FIN leaves the end to read: it is the sending side's).
    public func receive<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> Int {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        return try block(for: .readable) { (engine) throws(RStreamError) -> Int? in
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

    /// `withReceivedBytes` whose `body` may throw and returns a value of its own beside the count
    /// it consumed. If `body` throws, nothing is consumed and its error is rethrown. `value` is nil
    /// when no bytes were there (`body` was not called: would block, or end of stream).
    public func withReceivedBytes<Value>(
        _ body: (UnsafeRawBufferPointer) throws -> (consumed: Int, value: Value)
    ) throws -> (result: ReceiveResult, value: Value?) {
        var outcome: Result<Value, any Error>?
        let result = try withReceivedBytes { bytes in Self.count(of: { try body(bytes) }, keeping: &outcome) }
        return (result, try outcome?.get())
    }

    /// FI_PEEK on receive: how many bytes can be read now without consuming them, after driving progress.
    public var readableBytes: Int {
        (try? withEngine { engine in
            engine.progress()
            return engine.readableCount
        }) ?? 0
    }

    @usableFromInline
    static func result(_ outcome: ReceiveOutcome) -> ReceiveResult {
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
        _ = try block(for: [], deadline: timeout.map { ContinuousClock.now + $0 }) { (engine) throws(RStreamError) -> Bool? in
            try engine.progressAndCheckFlushed() ? true : nil
        }
    }

    /// Closes the stream: every call made after it, and every call blocked in another thread (a
    /// receive, a send, a wait), ends with `.closed` at once. Then sends FIN if not yet sent and
    /// waits up to `linger` for it and every write to leave and for the peer to consume every byte
    /// (so that closing loses no tail the peer still reads), and ends the connection. True when all
    /// of that happened in time; false when the linger ran out, the peer went quiet with bytes
    /// unread, the stream had failed, or it was closed before. The rings, registrations and queues
    /// are freed when the stream object is released.
    @discardableResult
    public func close(linger: Duration = .seconds(2)) -> Bool {
        guard beginClose() else { return false }
        return logClose(engine.closeLingering(for: linger))
    }

    func logClose(_ delivered: Bool) -> Bool {
        options.logger.debug("closed", metadata: Self.metadata(engine).merging(["delivered": "\(delivered)"]) { $1 })
        return delivered
    }

    /// Raises `closed` (false when it was raised before) and wakes the sleepers of other threads
    /// and tasks, which then find the stream closed.
    func beginClose() -> Bool {
        guard !closed.exchange(true, ordering: .sequentiallyConsistent) else { return false }
        waitSet?.ring()
        return true
    }
}

extension StreamOptions {
    var shape: EndpointShape {
        var shape = EndpointShape(sendRingSize: sendRingSize, receiveRingSize: receiveRingSize, txQueueSize: txQueueSize,
                                  rxCredits: rxCredits, iwarp: iwarp, numaNode: numaNode)
        shape.waitDescriptor = waitDescriptor
        shape.sharedCompletions = sharedCompletions
        shape.prefaultRings = prefaultRings
        shape.peerTimeout = peerTimeout
        return shape
    }

    var requirements: CoreRequirements { CoreRequirements(provider: provider, iwarp: iwarp) }
}

extension RStreamError {
    /// `code` as swift-system's `Errno` (libfabric's `FI_E*` codes below 256 are errno values);
    /// nil when there is none, or it is one of libfabric's own.
    public var errno: Errno? { code > 0 && code < 256 ? Errno(rawValue: code) : nil }
}
