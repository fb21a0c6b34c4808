import RStreamKernel

/// async/await on a stream, through the kernel's one wait (`BlockingWait.runAsync`): a waiting
/// task busy-polls (yielding) for the options' window, then arms the stream's descriptor and
/// suspends on the process's reactor (one thread, started by the first async wait, asleep in
/// `epoll_wait` while nothing happens) until the stream may be ready. The reactor drives an idle
/// stream's progress itself every second (the heartbeat duty of protocol v4) and looks at
/// words that cannot make it ready without resuming the task, so an idle task costs almost nothing.
///
/// Cancelling a waiting task resumes it at once and throws `CancellationError`, leaving the stream
/// as it was: bytes are only taken by a call that returns them. A `close` from anywhere ends a
/// waiting task with `.closed`.
extension StreamConnection {
    /// Connects as `connect(host:port:options:timeout:)` does, suspending the task, not its
    /// thread, while the answer is awaited.
    public static func connect(
        host: String, port: UInt16, options: StreamOptions = StreamOptions(), timeout: Duration? = .seconds(10)
    ) async throws -> StreamConnection {
        try options.validate()
        let engine = try await StreamConnector.connectAsync(
            host: host, port: port, shape: options.shape, requirements: options.requirements,
            deadline: timeout.map { ContinuousClock.now + $0 })
        return StreamConnection(engine: engine, options: options, event: "connected")
    }

    /// Retries `attempt` until it yields, suspending the task between tries.
    private func blockAsync<R>(
        for interest: WaitInterest, deadline: ContinuousClock.Instant? = nil,
        _ attempt: (StreamEngine) throws(RStreamError) -> R?
    ) async throws -> R {
        let engine = engine
        let wait = BlockingWait(deadline: deadline, busyWindow: options.busyPollWindow, waitSet: waitSet,
                                what: "the stream to become ready")
        // The reactor can judge readability and room, not what an empty interest waits for (a
        // flush): such a wait is resumed at every wake-up instead.
        let check: @Sendable () -> Bool = { [self] in engine.prepareToWait(for: interest, sleeper: true, unless: { isClosed }) }
        let tick: @Sendable () -> Bool = { [self] in !engine.tickWhileWaiting(for: interest) && !isClosed }
        let stillIdle = interest.isEmpty ? nil : check
        let onTick = interest.isEmpty ? nil : tick
        return try await wait.runAsync(
            interruption: { isClosed ? Self.closedError : nil },
            prepare: { engine.prepareToWait(for: interest, sleeper: true, unless: { isClosed }) },
            stillIdle: stillIdle,
            onTick: onTick,
            watching: true,
            attempt: { (round) throws(RStreamError) -> R? in
                if round & 63 == 63 { engine.pollConnectionEvents() }
                return try attempt(engine)
            })
    }

    /// Sends at least one byte of `bytes`, suspending while the stream cannot take any.
    public func send(_ bytes: some Collection<UInt8> & Sendable) async throws -> Int {
        guard !bytes.isEmpty else { return 0 }
        return try await blockAsync(for: .writable) { (engine) throws(RStreamError) -> Int? in
            let n = try engine.send(contentsOf: bytes)
            return n > 0 ? n : nil
        }
    }

    /// Sends every byte of `bytes`. If the task is cancelled part-way, the bytes already accepted
    /// stay sent and the error says nothing more was.
    public func sendAll(_ bytes: some Collection<UInt8> & Sendable) async throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = try await blockAsync(for: .writable) { (engine) throws(RStreamError) -> Int? in
                let n = try engine.send(contentsOf: rest)
                return n > 0 ? n : nil
            }
            rest = rest.dropFirst(n)
        }
    }

    /// Receives at least one byte into the front of `buffer`; 0 at end of stream.
    public func receive(into buffer: inout [UInt8]) async throws -> Int {
        precondition(!buffer.isEmpty, "receive into an empty buffer")
        return try await blockAsync(for: .readable) { (engine) throws(RStreamError) -> Int? in
            switch try engine.receive(into: &buffer) {
            case .bytes(let n): return n
            case .endOfStream: return 0
            case .wouldBlock: return nil
            }
        }
    }

    /// Receives up to `maxBytes`; empty at end of stream.
    public func receive(maxBytes: Int) async throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        let n = try await receive(into: &buffer)
        buffer.removeSubrange(n...)
        return buffer
    }

    /// Suspends until the stream is ready for `interest`; false if `timeout` passed first.
    public func wait(for interest: WaitInterest, timeout: Duration? = nil) async throws -> Bool {
        do {
            return try await blockAsync(for: interest, deadline: timeout.map { ContinuousClock.now + $0 }) { (engine) -> Bool? in
                engine.progressAndCheck(readyFor: interest) ? true : nil
            }
        } catch let error as RStreamError where error.kind == .timedOut {
            return false
        }
    }

    /// Suspends until every byte accepted so far and the FIN (if sent) have left this side.
    public func flush(timeout: Duration? = nil) async throws {
        _ = try await blockAsync(for: [], deadline: timeout.map { ContinuousClock.now + $0 }) { (engine) throws(RStreamError) -> Bool? in
            try engine.progressAndCheckFlushed() ? true : nil
        }
    }

    /// `close(linger:)` for a task: the linger suspends the task, not its thread. Every call
    /// blocked or awaiting on the stream ends with `.closed` at once.
    @discardableResult
    public func close(linger: Duration = .seconds(2)) async -> Bool {
        guard beginClose() else { return false }
        return logClose(await engine.closeLingeringAsync(for: linger))
    }

    /// The received bytes as an asynchronous sequence of chunks of up to `maxBytes`, ending at
    /// end of stream.
    public func chunks(maxBytes: Int = 64 * 1024) -> ReceivedChunks {
        ReceivedChunks(stream: self, maxBytes: maxBytes)
    }
}

/// Chunks received from a stream, in order, until end of stream.
public struct ReceivedChunks: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let stream: StreamConnection
    let maxBytes: Int

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: StreamConnection
        let maxBytes: Int
        public mutating func next() async throws -> [UInt8]? {
            let chunk = try await stream.receive(maxBytes: maxBytes)
            return chunk.isEmpty ? nil : chunk
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: stream, maxBytes: maxBytes) }
}

extension StreamListener {
    /// Suspends until the next connection and returns its stream (as `accept(timeout:)`). A
    /// `close` of the listener ends it with `.closed`.
    public func accept(timeout: Duration? = nil) async throws -> StreamConnection {
        do {
            let engine = try await passive.acceptAsync(shape: options.shape, deadline: timeout.map { ContinuousClock.now + $0 })
            return StreamConnection(engine: engine, options: options, event: "accepted")
        } catch let error as RStreamError {
            logRefusal(error)
            throw error
        }
    }
}
