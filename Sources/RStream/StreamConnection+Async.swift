#if canImport(Glibc)
import Glibc
#endif

/// async/await on a stream, without a thread per connection and without any thread of the
/// library's: a waiting task busy-polls for the options' window, then arms the stream's descriptor
/// and checks it between short `Task.sleep`s (20 µs growing to 1 ms). Cancelling a waiting task
/// throws `CancellationError` and leaves the stream as it was: bytes are only taken by a call that
/// returns them.
extension StreamConnection {
    private func waitAsync(for interest: WaitInterest, round: inout Int, busyUntil: ContinuousClock.Instant) async throws {
        try Task.checkCancellation()
        round += 1
        if ContinuousClock.now < busyUntil {
            await Task.yield()
            return
        }
        let backoff = Duration.microseconds(min(1000, 20 << min(round / 64, 6)))
        if prepareToWait(for: interest), let fd = descriptor {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 0) > 0 { return }
        }
        try await Task.sleep(for: backoff)
    }

    /// Sends at least one byte of `bytes`, suspending while the stream cannot take any.
    public func send(_ bytes: some Collection<UInt8> & Sendable) async throws -> Int {
        guard !bytes.isEmpty else { return 0 }
        var round = 0
        let busyUntil = ContinuousClock.now + options.busyPollWindow
        while true {
            if case .sent(let n) = try trySend(bytes) { return n }
            try await waitAsync(for: .writable, round: &round, busyUntil: busyUntil)
        }
    }

    /// Sends every byte of `bytes`. If the task is cancelled part-way, the bytes already accepted
    /// stay sent and the error says nothing more was.
    public func sendAll(_ bytes: some Collection<UInt8> & Sendable) async throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = try await send(Array(rest.prefix(1 << 20)))
            rest = rest.dropFirst(n)
        }
    }

    /// Receives at least one byte into the front of `buffer`; 0 at end of stream.
    public func receive(into buffer: inout [UInt8]) async throws -> Int {
        var round = 0
        let busyUntil = ContinuousClock.now + options.busyPollWindow
        while true {
            switch try tryReceive(into: &buffer) {
            case .received(let n): return n
            case .endOfStream: return 0
            case .wouldBlock: try await waitAsync(for: .readable, round: &round, busyUntil: busyUntil)
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
