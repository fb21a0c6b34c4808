/// What a receive found.
package enum ReceiveOutcome: Equatable, Sendable {
    case bytes(Int)
    case wouldBlock
    case endOfStream
}

/// The protocol-v3 state of one connected stream over any transport: the send and receive rings'
/// cursors, credits and ring space, the CONTROL bookkeeping, FIN and failure. It never blocks, and
/// it allocates nothing after `init`; progress happens inside the caller's calls.
///
/// Invariants (checked in debug builds by `checkInvariants`):
/// - 0 <= txCredits <= costs.txQueueSize; 0 <= targetCredits <= peer.rxCredits;
///   0 <= remoteSpace <= peer.ringSize; 0 <= remoteOffset < peer.ringSize;
/// - the send cursor's used bytes are exactly the bytes of writes in flight (plus a staged write);
/// - 0 <= unreportedCredits <= localRxCredits; 0 <= unreportedFreed <= receive ring capacity;
/// - once `failure` is set, no more words are posted.
package struct StreamEngine<Transport: StreamTransport & ~Copyable>: ~Copyable {
    package var transport: Transport
    package let peer: ConnectionBlock
    package let localRxCredits: Int
    package let costs: TransportCosts

    private var sendCursor: RingCursor
    private var receiveCursor: RingCursor
    private var writes: WriteFIFO

    // The sender's side.
    private var txCredits: Int
    private var targetCredits: Int
    private var remoteSpace: Int
    private var remoteOffset = 0
    /// A write fully accounted for whose post found the core's queue full; posted before anything else.
    private var staged: (sendOffset: Int, length: Int, remoteOffset: Int, slot: Int)?

    // The receiver's side: what the next CONTROL word will return.
    private var unreportedFreed = 0
    private var unreportedCredits = 0
    private var unreportedDataCredits = 0

    private var finRequested = false
    private var finSent = false
    private var finReceived = false
    private var peerDisconnected = false
    package private(set) var failure: RStreamError?

    private let events: UnsafeMutableBufferPointer<TransportEvent>

    /// Transmit slots and peer receives that data may not take: they are kept for CONTROL words,
    /// so that data can never starve a credit update.
    package static var reserve: Int { 2 }
    private static var eventBatch: Int { 16 }

    package init(transport: consuming Transport, peer: ConnectionBlock) {
        let costs = transport.costs
        self.costs = costs
        self.transport = transport
        self.peer = peer
        self.localRxCredits = costs.postedReceives
        sendCursor = RingCursor(capacity: self.transport.sendRing.count)
        receiveCursor = RingCursor(capacity: self.transport.receiveRing.count)
        writes = WriteFIFO(capacity: costs.txQueueSize)
        txCredits = costs.txQueueSize
        targetCredits = peer.rxCredits
        remoteSpace = peer.ringSize
        events = .allocate(capacity: Self.eventBatch)
        events.initialize(repeating: .transmitted(writeSlot: nil))
    }

    deinit { events.deallocate() }

    // MARK: Progress

    /// Reads the completions waiting and acts on them, then sends a CONTROL word if one is due.
    /// Errors do not escape: they become `failure`, reported after the bytes that came before.
    package mutating func progress() {
        guard failure == nil else { return }
        do throws(RStreamError) {
            try flushStaged()
            for _ in 0..<8 {
                let n = try transport.poll(into: events)
                for i in 0..<n {
                    handle(events[i])
                    if failure != nil { return }
                }
                if n < events.count { break }
            }
            try flushControl()
        } catch {
            fail(error)
        }
        checkInvariants()
    }

    private mutating func handle(_ event: TransportEvent) {
        switch event {
        case .transmitted(let slot):
            precondition(txCredits < costs.txQueueSize, "more transmit completions than operations posted")
            txCredits += 1
            if let slot {
                sendCursor.consume(writes.complete(slot: slot))
            }
        case .notified(let word, let consumed):
            if consumed {
                unreportedCredits += 1
                guard unreportedCredits <= localRxCredits else {
                    return fail(.protocolViolation("peer used more than the \(localRxCredits) receives it was credited"))
                }
            }
            guard let word else {
                return fail(.protocolViolation(costs.txPerDataWrite == 2
                    ? "a message whose payload is not 4 bytes" : "a completion without remote CQ data"))
            }
            do throws(RStreamError) {
                let decoded = try NotificationWord.decode(word)
                // After FIN the peer may still return credits and ring space for what we send
                // (half-close), but only in CONTROL words that repeat the FIN bit.
                if finReceived, case .control(_, _, true) = decoded {} else if finReceived {
                    throw .protocolViolation("word 0x\(String(word, radix: 16)) after FIN")
                }
                switch decoded {
                case .data(let n):
                    guard n <= receiveCursor.contiguousFree else {
                        throw .protocolViolation("DATA of \(n) bytes at offset \(receiveCursor.writeOffset) beyond the \(receiveCursor.contiguousFree) free bytes of the receive ring")
                    }
                    receiveCursor.produce(n)
                    if consumed { unreportedDataCredits += 1 }
                case .control(let freed, let credits, let fin):
                    guard targetCredits + credits <= peer.rxCredits else {
                        throw .protocolViolation("CONTROL returns \(credits) credits; \(targetCredits) held of \(peer.rxCredits)")
                    }
                    guard remoteSpace + freed <= peer.ringSize else {
                        throw .protocolViolation("CONTROL frees \(freed) bytes; \(remoteSpace) free of \(peer.ringSize)")
                    }
                    targetCredits += credits
                    remoteSpace += freed
                    if fin { finReceived = true }
                }
            } catch {
                fail(error)
            }
        case .failed(let code, let transmit):
            if !transmit && (finReceived || finSent && peerDisconnected) { return } // receives flushed at close
            fail(RStreamError.fabric(Int(code), transmit ? "a write to the peer failed" : "the connection failed"))
            if failure?.kind == .fabric { failure?.kind = .connectionReset }
        }
    }

    private mutating func fail(_ error: RStreamError) {
        guard failure == nil else { return }
        failure = error
        if error.kind == .protocolViolation { transport.disconnect() }
    }

    /// The core connection went away (an `FI_SHUTDOWN` event): a reset unless the FIN came first.
    package mutating func peerDidDisconnect() {
        progress() // words already in the queue come before the disconnect
        peerDisconnected = true
        if !finReceived {
            fail(RStreamError(.connectionReset, code: 104, "the peer disconnected without FIN"))
        }
    }

    /// Sends a CONTROL word when one is due: FIN requested; half the receive ring or half the
    /// credits to return; or the peer would otherwise stall (data needs more than `reserve`
    /// credits, a CONTROL needs one). A credit consumed by a CONTROL word alone returns only with
    /// others, so two idle peers never bounce CONTROL words back and forth.
    private mutating func flushControl() throws(RStreamError) {
        let wantFin = finRequested && !finSent && staged == nil
        guard wantFin || unreportedFreed > 0 || unreportedCredits > 0 else { return }
        // Every word after our FIN repeats it: the only words the peer accepts after a FIN.
        let fin = wantFin || finSent
        let rx = localRxCredits
        let due = wantFin
            || unreportedFreed >= receiveCursor.capacity / 2
            || unreportedCredits >= (rx + 1) / 2
            || (unreportedDataCredits > 0 && rx - unreportedCredits <= Self.reserve)
            || rx - unreportedCredits <= 1
        guard due, txCredits >= 1, targetCredits >= 1, !peerDisconnected, failure == nil else { return }
        let word = NotificationWord.control(freed: unreportedFreed, credits: unreportedCredits, fin: fin).encoded
        guard try transport.send(word: word) else { return }
        txCredits -= 1
        targetCredits -= 1
        unreportedFreed = 0
        unreportedCredits = 0
        unreportedDataCredits = 0
        if wantFin { finSent = true }
    }

    // MARK: Sending

    /// Bytes one write may carry now: 0 when credits, the FIFO, a staged write or either ring stops it.
    private var writableSpan: Int {
        guard staged == nil, !finRequested, failure == nil, !writes.isFull,
              txCredits - costs.txPerDataWrite >= Self.reserve,
              costs.peerReceivesPerDataWrite == 0 || targetCredits - costs.peerReceivesPerDataWrite >= Self.reserve
        else { return 0 }
        return min(sendCursor.contiguousFree, remoteSpace, peer.ringSize - remoteOffset)
    }

    private func checkSendable() throws(RStreamError) {
        if finRequested { throw RStreamError(.closed, code: 108, "send after shutdown") }
        if let failure { throw failure }
    }

    /// Accounts for `n` bytes just placed at the send ring's write offset and posts their write.
    private mutating func commit(_ n: Int) throws(RStreamError) {
        assert(n > 0 && n <= writableSpan)
        staged = (sendCursor.writeOffset, n, remoteOffset, writes.push(length: n))
        sendCursor.produce(n)
        remoteSpace -= n
        remoteOffset += n
        if remoteOffset == peer.ringSize { remoteOffset = 0 }
        txCredits -= costs.txPerDataWrite
        targetCredits -= costs.peerReceivesPerDataWrite
        try flushStaged()
    }

    private mutating func flushStaged() throws(RStreamError) {
        guard let write = staged else { return }
        let word = NotificationWord.data(length: write.length).encoded
        if try transport.write(sendOffset: write.sendOffset, length: write.length, remoteOffset: write.remoteOffset,
                               word: word, writeSlot: write.slot) {
            staged = nil
        }
    }

    /// Copies as many of `bytes` as fit now into the send ring and writes them; returns how many
    /// (0: would block). The bytes accepted stay contiguous in the stream.
    package mutating func send(_ bytes: UnsafeRawBufferPointer) throws(RStreamError) -> Int {
        try checkSendable()
        // Completions are read only when the credits already known do not cover the request: a
        // poll costs a system call on some cores, and a send-heavy caller need not pay it per call.
        if writableSpan < bytes.count { progress() }
        var done = 0
        do throws(RStreamError) {
            while done < bytes.count {
                var span = min(writableSpan, bytes.count - done)
                if span == 0 {
                    progress()
                    span = min(writableSpan, bytes.count - done)
                    if span == 0 { break }
                }
                let target = transport.sendRing.baseAddress! + sendCursor.writeOffset
                target.copyMemory(from: bytes.baseAddress! + done, byteCount: span)
                try commit(span)
                done += span
            }
        } catch {
            fail(error)
        }
        if done == 0, let failure { throw failure }
        return done
    }

    /// Gives `body` the contiguous part of the send ring that one write may carry now (empty when
    /// sending would block); `body` fills a prefix and returns its length, which is then written.
    package mutating func withWritableBytes(_ body: (UnsafeMutableRawBufferPointer) -> Int) throws(RStreamError) -> Int {
        try checkSendable()
        if writableSpan == 0 { progress() }
        let span = writableSpan
        guard span > 0 else {
            if let failure { throw failure }
            return 0
        }
        let region = UnsafeMutableRawBufferPointer(start: transport.sendRing.baseAddress! + sendCursor.writeOffset, count: span)
        let n = body(region)
        precondition(n >= 0 && n <= span, "committed \(n) bytes of a \(span)-byte send buffer")
        if n > 0 {
            do throws(RStreamError) { try commit(n) } catch { fail(error); throw error }
        }
        return n
    }

    /// Bytes a send could take now without blocking.
    package var writableCount: Int {
        let span = writableSpan
        guard span > 0 else { return 0 }
        var writes = (txCredits - Self.reserve) / costs.txPerDataWrite
        if costs.peerReceivesPerDataWrite > 0 { writes = min(writes, (targetCredits - Self.reserve) / costs.peerReceivesPerDataWrite) }
        // Both rings wrap at most once each, so three writes carry everything that is free.
        return writes >= 3 ? min(sendCursor.free, remoteSpace) : span
    }

    /// Starts the FIN: sent after every byte already accepted, as soon as credits allow.
    package mutating func shutdown() {
        guard !finRequested else { return }
        finRequested = true
        progress()
    }

    /// True once every write and word this side posted has completed locally.
    package var isQuiescent: Bool { staged == nil && txCredits == costs.txQueueSize }
    package var hasSentFin: Bool { finSent }
    package var hasReceivedFin: Bool { finReceived }
    package var isShutdown: Bool { finRequested }

    // MARK: Receiving

    private mutating func consumed(_ n: Int) {
        receiveCursor.consume(n)
        unreportedFreed += n
        do throws(RStreamError) { try flushControl() } catch { fail(error) }
    }

    /// What a receive reports when no bytes are waiting: end of stream, the failure, or would block.
    package func outcomeWhenEmpty() throws(RStreamError) -> ReceiveOutcome {
        if let failure { throw failure }
        if finReceived { return .endOfStream }
        return .wouldBlock
    }

    /// Copies received bytes into `buffer`; at least one byte, or would block, or end of stream
    /// after the peer's FIN and every byte before it. A failure is reported once the bytes that
    /// arrived before it have been read.
    package mutating func receive(into buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        precondition(buffer.count > 0, "receive into an empty buffer")
        progress()
        guard !receiveCursor.isEmpty else { return try outcomeWhenEmpty() }
        let ring = transport.receiveRing.baseAddress!
        var done = 0
        while done < buffer.count && !receiveCursor.isEmpty {
            let span = min(receiveCursor.contiguousUsed, buffer.count - done)
            (buffer.baseAddress! + done).copyMemory(from: ring + receiveCursor.readOffset, byteCount: span)
            receiveCursor.consume(span)
            done += span
        }
        unreportedFreed += done
        do throws(RStreamError) { try flushControl() } catch { fail(error) }
        return .bytes(done)
    }

    /// Gives `body` the received bytes that lie contiguous in the ring; `body` returns how many it
    /// consumed. The result tells how many, or would block / end of stream when none were there.
    package mutating func withReadableBytes(_ body: (UnsafeRawBufferPointer) -> Int) throws(RStreamError) -> ReceiveOutcome {
        progress()
        guard !receiveCursor.isEmpty else { return try outcomeWhenEmpty() }
        let region = UnsafeRawBufferPointer(start: transport.receiveRing.baseAddress! + receiveCursor.readOffset,
                                            count: receiveCursor.contiguousUsed)
        let n = body(region)
        precondition(n >= 0 && n <= region.count, "consumed \(n) bytes of \(region.count)")
        consumed(n)
        return .bytes(n)
    }

    /// Bytes a receive could return now without blocking.
    package var readableCount: Int { receiveCursor.used }

    /// True when a receive would not block: bytes, end of stream or a failure to report.
    package var isReadable: Bool { !receiveCursor.isEmpty || finReceived || failure != nil }

    @inline(__always)
    private func checkInvariants() {
        assert(txCredits >= 0 && txCredits <= costs.txQueueSize, "txCredits \(txCredits)")
        assert(targetCredits >= 0 && targetCredits <= peer.rxCredits, "targetCredits \(targetCredits)")
        assert(remoteSpace >= 0 && remoteSpace <= peer.ringSize, "remoteSpace \(remoteSpace)")
        assert(remoteOffset >= 0 && remoteOffset < peer.ringSize, "remoteOffset \(remoteOffset)")
        assert(unreportedCredits >= 0 && unreportedCredits <= localRxCredits, "unreportedCredits")
        assert(unreportedFreed >= 0 && unreportedFreed <= receiveCursor.capacity, "unreportedFreed")
        assert(sendCursor.used == 0 || writes.inFlight > 0, "send ring holds bytes no write carries")
    }
}
