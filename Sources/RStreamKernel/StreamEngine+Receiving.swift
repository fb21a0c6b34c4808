// The receive path: bytes out of the receive ring under the receive lock; what was freed is
// returned to the peer by the CONTROL rule.
extension StreamEngine {
    /// What a receive reports when no bytes are waiting: end of stream, the failure, or would block.
    /// After the peer's FIN and every byte before it, the end even if the connection was reset
    /// since: a reset after the FIN (a CONTROL word of ours refused because the peer closed:
    /// tcp's ENOTCONN) is the send side's, which sends, `flush` and a lingering close report. (A
    /// reader that had every byte got a reset instead of the end: issue 11's C server over a
    /// thousand connections saw it.) A protocol violation after the FIN is still the reader's.
    package func outcomeWhenEmpty() throws(RStreamError) -> ReceiveOutcome {
        if endsDespiteFailure {
            // The FIN is handled after the bytes before it; look again in case one landed since.
            return readableCount > 0 ? .wouldBlock : .endOfStream
        }
        if let failure { throw failure }
        return .wouldBlock
    }

    /// The FIN came, and nothing but a reset (if anything) failed the stream after it.
    private var endsDespiteFailure: Bool {
        guard hasReceivedFin else { return false }
        guard let failure else { return true }
        return failure.kind == .connectionReset
    }

    /// Copies `count` received bytes (no more than are in the ring) out of the receive ring from
    /// `offset` into `destination`, wrapping at most once; returns the offset after them.
    @inline(__always)
    private func copyOut(_ count: Int, from offset: Int, to destination: UnsafeMutableRawPointer) -> Int {
        assert(count <= receiveCapacity && offset < receiveCapacity, "copy of \(count) bytes at \(offset)")
        let first = min(count, receiveCapacity - offset)
        destination.copyMemory(from: receiveBase + offset, byteCount: first)
        if first < count { (destination + first).copyMemory(from: receiveBase, byteCount: count - first) }
        let end = offset + count
        return end >= receiveCapacity ? end - receiveCapacity : end
    }

    /// Bytes received and not consumed, as the receive shard sees them (its own count relaxed).
    private var held: Int {
        counters.progress.pointee.received.load(ordering: .acquiring) - counters.receive.pointee.consumed.load(ordering: .relaxed)
    }

    private func consume(_ n: Int) { counters.receive.pointee.consumed.advance(by: n) }

    /// Copies received bytes into `buffer`; at least one byte, or would block, or end of stream
    /// after the peer's FIN and every byte before it. A failure is reported once the bytes that
    /// arrived before it have been read.
    package func receive(into buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        precondition(buffer.count > 0, "receive into an empty buffer")
        progressIfNews()
        let done = receiveShard.pointee.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let done = min(held, buffer.count)
            if done > 0 {
                r.readOffset = copyOut(done, from: r.readOffset, to: buffer.baseAddress!)
                consume(done)
            }
            return done
        }
        guard done > 0 else { return try outcomeWhenEmpty() }
        requestControl()
        return .bytes(done)
    }

    /// Gives `body` the received bytes that lie contiguous in the ring; `body` returns how many it
    /// consumed. The result tells how many, or would block / end of stream when none were there.
    package func withReadableBytes(_ body: (UnsafeRawBufferPointer) -> Int) throws(RStreamError) -> ReceiveOutcome {
        progressIfNews()
        let n = receiveShard.pointee.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let used = held
            guard used > 0 else { return -1 }
            let region = UnsafeRawBufferPointer(start: receiveBase + r.readOffset, count: min(used, receiveCapacity - r.readOffset))
            let n = body(region)
            precondition(n >= 0 && n <= region.count, "consumed \(n) bytes of \(region.count)")
            r.readOffset += n
            if r.readOffset == receiveCapacity { r.readOffset = 0 }
            consume(n)
            return n
        }
        guard n >= 0 else { return try outcomeWhenEmpty() }
        if n > 0 { requestControl() }
        return .bytes(n)
    }

    /// Copies received bytes into `buffer` without consuming them (`FI_PEEK`): as many as are
    /// there, up to `buffer.count`; an empty buffer only asks how many. Would block or end of
    /// stream as `receive` reports them.
    package func peek(into buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        progressIfNews()
        let available = receiveShard.pointee.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let used = held
            let copied = min(used, buffer.count)
            if copied > 0 { _ = copyOut(copied, from: r.readOffset, to: buffer.baseAddress!) }
            return used
        }
        guard available > 0 else { return try outcomeWhenEmpty() }
        return .bytes(buffer.count == 0 ? available : min(available, buffer.count))
    }

    /// Receives exactly `buffer.count` bytes, or none: would block until that many are there, or
    /// end of stream (or the failure) once they can no longer come, even if a shorter tail is
    /// still readable (`receive(into:)` hands it out).
    package func receive(exactly buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        progressIfNews()
        let taken = receiveShard.pointee.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Bool in
            guard held >= buffer.count else { return false }
            r.readOffset = copyOut(buffer.count, from: r.readOffset, to: buffer.baseAddress!)
            consume(buffer.count)
            return true
        }
        if taken {
            requestControl()
            return .bytes(buffer.count)
        }
        // Every byte before a FIN or a failure is counted before its flag is set, so once either is
        // seen, what is readable is all that will ever be (looked at again in case a byte landed
        // after the first look).
        guard hasReceivedFin || hasFailed, readableCount < buffer.count else { return .wouldBlock }
        if !endsDespiteFailure, let failure { throw failure } // see `outcomeWhenEmpty`
        return .endOfStream
    }

    package var hasReceivedFin: Bool { counters.progress.pointee.finReceived.load(ordering: .acquiring) }

    /// Bytes a receive could return now without blocking.
    package var readableCount: Int { counters.readable }

    /// True when a receive would not block: bytes, end of stream or a failure to report.
    package var isReadable: Bool { readableCount > 0 || hasReceivedFin || hasFailed }
}
