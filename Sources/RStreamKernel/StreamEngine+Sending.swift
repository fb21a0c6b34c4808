#if canImport(Glibc)
import Glibc
#endif
import CBulkCopy
// The send path: bytes into the send ring (or, for a direct-write transport, straight into the
// peer's receive ring), one write per contiguous span (a streaming send's spans cut at the
// transport's `largestStreamingWrite`), under the send lock.
extension StreamEngine {
    private var dataCreditsAllowAWrite: Bool {
        counters.txAvailable - costs.txPerDataWrite >= Self.reserve
            && (costs.peerReceivesPerDataWrite == 0 || counters.peerReceivesAvailable - costs.peerReceivesPerDataWrite >= Self.reserve)
    }

    /// Bytes one write may carry now (send lock held): 0 when credits, the ledger, a staged write
    /// or either ring stops it.
    private func writableSpan(_ s: borrowing SendShard) -> Int {
        guard s.staged.isEmpty, !counters.send.pointee.finRequested.load(ordering: .relaxed), !hasFailed,
              !ledger.pointee.isFull, dataCreditsAllowAWrite
        else { return 0 }
        return ringSpan(s)
    }

    /// Bytes the next write of a streaming send (`send`, `withWritableBytes`) carries: what
    /// `writableSpan` allows, in parts no larger than the transport's streaming write.
    private func streamingSpan(_ s: borrowing SendShard) -> Int {
        min(writableSpan(s), costs.largestStreamingWrite)
    }

    /// Bytes the rings let the next write carry: contiguous free bytes of both rings.
    private func ringSpan(_ s: borrowing SendShard) -> Int {
        let localFree = min(sendCapacity - counters.sendRingUsed, sendCapacity - s.writeOffset)
        return min(localFree, counters.remoteSpace, peer.ringSize - s.remoteOffset)
    }

    private func checkSendable() throws(RStreamError) {
        if counters.send.pointee.finRequested.load(ordering: .acquiring) { throw RStreamError(.closed, code: 108, "send after shutdown") }
        if let failure { throw failure }
        // Gone after its FIN (so the stream has not failed: its bytes and end still read): nothing
        // sent now can be read, and a send waiting for room would wait for ever.
        if signals.pointee.peerDisconnected.load(ordering: .acquiring) { throw Self.peerLeftError }
    }

    /// What a send, a flush or a look at room reports once the peer has left after its FIN.
    package static let peerLeftError = RStreamError(.connectionReset, code: EPIPE, "the peer has left: nothing more can be sent")

    /// Accounts for `n` bytes just placed at the send ring's write offset and posts their write.
    private func commit(_ n: Int, _ s: inout SendShard) throws(RStreamError) {
        assert(n > 0 && n <= ringSpan(s) && s.staged.count < 3)
        let sc = counters.send
        var write = StagedWrite(sendOffset: s.writeOffset, length: n, remoteOffset: s.remoteOffset,
                                slot: ledger.pointee.push(length: n))
        s.writeOffset += n
        if s.writeOffset == sendCapacity { s.writeOffset = 0 }
        sc.pointee.committed.advance(by: n)
        sc.pointee.remoteWritten.advance(by: n)
        s.remoteOffset += n
        if s.remoteOffset == peer.ringSize { s.remoteOffset = 0 }
        sc.pointee.txTaken.advance(by: costs.txPerDataWrite)
        sc.pointee.peerReceivesTaken.advance(by: costs.peerReceivesPerDataWrite)
        if s.staged.isEmpty {
            // The usual case: posted at once, staged only if the transport refuses it.
            switch try transport.write(sendOffset: write.sendOffset, length: n, remoteOffset: write.remoteOffset,
                                       word: NotificationWord.data(length: n).encoded, writeSlot: write.slot) {
            case .complete: return
            case .bytesOnly: write.bytesPosted = true
            case .notPosted: break
            }
        }
        s.staged.append(write)
        try flushStaged(&s)
    }

    /// Posts the staged writes, oldest first, or what is left of them (send lock held). One that
    /// stays staged leaves a request standing, so that the next completion retries it even if
    /// nobody sends again.
    func flushStaged(_ s: inout SendShard) throws(RStreamError) {
        while let write = s.staged.first {
            let word = NotificationWord.data(length: write.length).encoded
            if write.bytesPosted {
                guard try transport.sendDataWord(word) else { break }
            } else {
                switch try transport.write(sendOffset: write.sendOffset, length: write.length, remoteOffset: write.remoteOffset,
                                           word: word, writeSlot: write.slot) {
                case .complete: break
                case .bytesOnly:
                    s.staged[0].bytesPosted = true
                    continue // its word next
                case .notPosted:
                    requestSendWork()
                    return
                }
            }
            s.staged.removeFirst()
        }
        if !s.staged.isEmpty { requestSendWork() }
    }

    /// Copies as many of `bytes` as fit now into the send ring and writes them; returns how many
    /// (0: would block). The bytes one call accepts stay contiguous in the stream.
    package func send(_ bytes: UnsafeRawBufferPointer) throws(RStreamError) -> Int {
        try checkSendable()
        let done = try withSendLock { (s: inout SendShard) throws(RStreamError) -> Int in
            do throws(RStreamError) { try flushStaged(&s) } catch { fail(error) }
            // Completions are read only when the credits already known do not cover the request:
            // a poll costs a system call on some cores.
            if writableSpan(s) < bytes.count { progressHoldingSendLock() }
            return copyIn(bytes, &s) { (s, left) in
                let span = min(streamingSpan(s), left)
                if span > 0 { return span }
                progressHoldingSendLock()
                return min(streamingSpan(s), left)
            }
        }
        if done == 0, let failure { throw failure }
        return done
    }

    /// The smallest send whose copy bypasses the cache where the transport asks for it: one of at
    /// least the default ring is bulk (a reader takes it from memory either way), a smaller one is
    /// an exchange whose reader finds it sooner in this CPU's cache (measured: a 4 KiB round trip
    /// is slower with the bypass, a 64 KiB one faster).
    static let bulkSendLength = 32 * 1024

    /// Copies `bytes` into the send ring, one write per span `nextSpan` allows (0: stop), and posts
    /// each write (send lock held); returns the bytes taken. A failure fails the stream and stops.
    private func copyIn(_ bytes: UnsafeRawBufferPointer, _ s: inout SendShard,
                        nextSpan: (inout SendShard, Int) -> Int) -> Int {
        var done = 0
        let bypassCache = costs.bulkCopyBypassesCache && bytes.count >= Self.bulkSendLength
        do throws(RStreamError) {
            while done < bytes.count {
                let span = nextSpan(&s, bytes.count - done)
                guard span > 0 else { break }
                if bypassCache {
                    // Fenced inside: the bytes are ordered before `commit` publishes their word.
                    rs_copy_bypassing_cache(sendBase + s.writeOffset, bytes.baseAddress! + done, span)
                } else {
                    (sendBase + s.writeOffset).copyMemory(from: bytes.baseAddress! + done, byteCount: span)
                }
                try commit(span, &s)
                done += span
            }
        } catch {
            fail(error)
        }
        return done
    }

    /// Copies all of `bytes` into the send ring and writes them, or none (0: would block): one step
    /// under the send lock, so that records several threads send are never split or interleaved.
    package func sendWhole(_ bytes: UnsafeRawBufferPointer) throws(RStreamError) -> Int {
        try checkSendable()
        guard bytes.count > 0 else { return 0 }
        let done = try withSendLock { (s: inout SendShard) throws(RStreamError) -> Int in
            do throws(RStreamError) { try flushStaged(&s) } catch { fail(error) }
            if recordCount(s) < bytes.count { progressHoldingSendLock() }
            guard recordCount(s) >= bytes.count else { return 0 }
            // `recordCount` promised the credits and ring space for all of it (at most three
            // writes): a write staged on the way does not stop the rest of the record.
            return copyIn(bytes, &s) { (s, left) in
                let span = min(ringSpan(s), left)
                assert(span > 0, "recordCount promised room for \(bytes.count) bytes")
                return span
            }
        }
        // A record cut short by a failure is not reported as sent: the stream has failed.
        if done < bytes.count, let failure { throw failure }
        return done
    }

    /// Gives `body` the contiguous part of the send ring that one write may carry now (empty when
    /// sending would block); `body` fills a prefix and returns its length, which is then written.
    package func withWritableBytes(_ body: (UnsafeMutableRawBufferPointer) -> Int) throws(RStreamError) -> Int {
        try checkSendable()
        let n = try withSendLock { (s: inout SendShard) throws(RStreamError) -> Int in
            if writableSpan(s) == 0 { progressHoldingSendLock() }
            let span = streamingSpan(s)
            guard span > 0 else { return 0 }
            let region = UnsafeMutableRawBufferPointer(start: sendBase + s.writeOffset, count: span)
            let n = body(region)
            precondition(n >= 0 && n <= span, "committed \(n) bytes of a \(span)-byte send buffer")
            if n > 0 {
                do throws(RStreamError) { try commit(n, &s) } catch { fail(error); throw error }
            }
            return n
        }
        if n == 0, let failure { throw failure }
        return n
    }

    /// Bytes a send could take now without blocking: a streaming one (`send`) or a record
    /// (`sendWhole`) of at most this many is taken whole.
    package var writableCount: Int {
        let count = sendShard.pointee.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Int in
            // A CONTROL word due now takes its credits first, so the count is what is left.
            if signals.pointee.sendWorkDue.load(ordering: .sequentiallyConsistent) { _ = serveSendWork(&s) }
            return min(recordCount(s), streamingCount(s))
        }
        serveSendWork() // a request whose try-lock this hold made miss
        return count
    }

    /// Whether a send could take a byte now (what `writableCount > 0` says, without counting).
    package var hasRoom: Bool {
        let room = sendShard.pointee.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Bool in writableSpan(s) > 0 }
        serveSendWork() // a request whose try-lock this hold made miss
        return room
    }

    /// Data writes that the credits and the ledger allow now (send lock held). Ledger slots retire
    /// in posting order, credits as completions come: both must allow each write.
    private var writesAllowed: Int {
        var writes = min((counters.txAvailable - Self.reserve) / costs.txPerDataWrite, ledger.pointee.freeSlots)
        if costs.peerReceivesPerDataWrite > 0 {
            writes = min(writes, (counters.peerReceivesAvailable - Self.reserve) / costs.peerReceivesPerDataWrite)
        }
        return writes
    }

    /// Bytes one record (`sendWhole`) could take now.
    private func recordCount(_ s: borrowing SendShard) -> Int {
        let span = writableSpan(s)
        guard span > 0 else { return 0 }
        // Both rings wrap at most once each, so three writes carry everything that is free.
        return writesAllowed >= 3 ? min(sendCapacity - counters.sendRingUsed, counters.remoteSpace) : span
    }

    /// Bytes a streaming send could take now: its parts walked as `streamingSpan` cuts them, one
    /// per allowed write (where the transport cuts none, the record's figure holds for it too).
    private func streamingCount(_ s: borrowing SendShard) -> Int {
        let part = costs.largestStreamingWrite
        guard part < .max else { return .max }
        guard writableSpan(s) > 0 else { return 0 }
        var local = s.writeOffset, remote = s.remoteOffset
        var localFree = sendCapacity - counters.sendRingUsed, remoteFree = counters.remoteSpace
        var total = 0
        for _ in 0..<writesAllowed {
            let n = min(part, localFree, sendCapacity - local, remoteFree, peer.ringSize - remote)
            guard n > 0 else { break }
            total += n
            localFree -= n
            remoteFree -= n
            local = local + n == sendCapacity ? 0 : local + n
            remote = remote + n == peer.ringSize ? 0 : remote + n
        }
        return total
    }

    /// A hint for waiters, from the counters alone (no lock): the stream may take bytes now.
    package var mayBeWritable: Bool {
        hasFailed || counters.send.pointee.finRequested.load(ordering: .acquiring)
            || signals.pointee.peerDisconnected.load(ordering: .acquiring)
            || (counters.sendRingUsed < sendCapacity && counters.remoteSpace > 0 && dataCreditsAllowAWrite)
    }

    /// Starts the FIN: sent after every byte already accepted, as soon as credits allow.
    package func shutdown() {
        let sc = counters.send
        guard !sc.pointee.finRequested.load(ordering: .acquiring) else { return }
        _ = try? withSendLock { (s: inout SendShard) in
            sc.pointee.finRequested.store(true, ordering: .releasing)
            if sc.pointee.finSent.load(ordering: .relaxed) { return }
            progressHoldingSendLock()
            _ = serveSendWork(&s)
        }
    }

    /// True once every write and word this side posted has completed locally.
    package var isQuiescent: Bool {
        let quiescent = sendShard.pointee.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Bool in
            s.staged.isEmpty && counters.progress.pointee.txReturned.load(ordering: .acquiring) == counters.send.pointee.txTaken.load(ordering: .relaxed)
        }
        serveSendWork() // a request whose try-lock this hold made miss
        return quiescent
    }
    package var hasSentFin: Bool { counters.send.pointee.finSent.load(ordering: .acquiring) }
    package var isShutdown: Bool { counters.send.pointee.finRequested.load(ordering: .acquiring) }

    /// True once the peer has consumed, and returned the space of, every byte this side wrote.
    package var peerHasConsumedEverything: Bool {
        counters.progress.pointee.remoteFreed.load(ordering: .acquiring) == counters.send.pointee.remoteWritten.load(ordering: .acquiring)
    }
}
