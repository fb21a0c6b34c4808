import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a receive found.
package enum ReceiveOutcome: Equatable, Sendable {
    case bytes(Int)
    case wouldBlock
    case endOfStream
}

/// The protocol-v4 state of one connected stream over any transport, sharded so that any number
/// of threads may send, receive and drive progress at once (`FI_THREAD_SAFE`).
///
/// Three locks, each guarding one shard:
/// - send: the send ring's write offset, the remote write offset, the staged writes, FIN, and what
///   the last CONTROL word reported; every word this side posts (data writes *and* CONTROL words)
///   is posted under it, so tx slots and peer receives have a single consumer;
/// - receive: the receive ring's read offset;
/// - progress: reading the completion queue, the receive ring's write offset.
///
/// The counters that cross shards are monotonic atomics with exactly one writer each (named beside
/// them); what is available is a difference of two of them. Lock order: receive → progress,
/// send → progress; the progress shard never waits for the send lock (it only tries it), and the
/// receive shard never takes it but by trying. Work that only the send shard may do (a CONTROL
/// word or heartbeat that a non-sender finds due, a write whose post found the queue full) is
/// requested with `sendWorkDue` and done by whoever holds, or next takes, the send lock.
///
/// Invariants (each checked where its owner changes it, and all of them by `brokenInvariants`
/// after every step of the single-threaded engine tests and the fuzzer):
/// - 0 <= txTaken − txReturned <= costs.txQueueSize; 0 <= peerReceivesTaken − peerReceivesReturned
///   <= peer.rxCredits; 0 <= remoteWritten − remoteFreed <= peer.ringSize;
/// - 0 <= received − consumed <= receive ring size; 0 <= sendCommitted − sendFreed <= send ring size;
/// - once failed, no more words are posted;
/// - staged writes are posted oldest first, before anything else the send shard posts; a new write
///   is staged behind them only within one whole record (`sendWhole`, at most three writes); a
///   write's DATA word always follows its bytes (iWarp posts them in two steps).
package final class StreamEngine<Transport: StreamTransport>: @unchecked Sendable {
    package let transport: Transport
    package let peer: ConnectionBlock
    package let localRxCredits: Int
    package let costs: TransportCosts
    private let sendCapacity: Int
    private let receiveCapacity: Int

    /// A data write fully accounted for whose post found the core's queue full; posted before
    /// anything else the send shard does. `bytesPosted`: its bytes went, its DATA word did not.
    /// (Rare: the tx credits mirror the core's queue, but a core may refuse for reasons of its own.)
    private struct StagedWrite {
        var sendOffset: Int
        var length: Int
        var remoteOffset: Int
        var slot: Int
        var bytesPosted = false
    }

    private struct SendShard {
        var writeOffset = 0
        var remoteOffset = 0
        /// Oldest first; capacity for the three writes of one record, reserved once.
        var staged: [StagedWrite]
        init() {
            staged = []
            staged.reserveCapacity(3)
        }
    }
    private struct ReceiveShard {
        var readOffset = 0
    }
    // Its buffer lies in the engine's hot region and is touched only under the progress lock.
    private struct ProgressShard: @unchecked Sendable {
        var writeOffset = 0
        let events: UnsafeMutableBufferPointer<TransportEvent>
        var liveness: Liveness
    }

    /// The endpoint's hot state: every counter, lock and buffer the data path touches, initialised
    /// in place in one page-aligned region on the rings' NUMA node (`Atomic` and `Mutex` need only
    /// a stable address). The crossing counters each have one writer, named beside them.
    private struct HotState: ~Copyable {
        let sendCommitted = Atomic<Int>(0)        // send: bytes placed in the send ring
        let sendFreed = Atomic<Int>(0)            // progress: bytes whose writes completed
        let txTaken = Atomic<Int>(0)              // send: transmit slots used
        let txReturned = Atomic<Int>(0)           // progress: local completions
        let peerReceivesTaken = Atomic<Int>(0)    // send: peer receives our words used
        let peerReceivesReturned = Atomic<Int>(0) // progress: credits in the peer's CONTROL words
        let remoteWritten = Atomic<Int>(0)        // send: bytes written to the peer's ring
        let remoteFreed = Atomic<Int>(0)          // progress: freed in the peer's CONTROL words
        let received = Atomic<Int>(0)             // progress: bytes DATA words placed
        let consumed = Atomic<Int>(0)             // receive: bytes handed to the caller
        let receivesUsed = Atomic<Int>(0)         // progress: our receives the peer used
        let dataReceivesUsed = Atomic<Int>(0)     // progress: of those, by data
        let reportedFreed = Atomic<Int>(0)        // send: `consumed` as of the last CONTROL
        let reportedCredits = Atomic<Int>(0)      // send: `receivesUsed` as of the last CONTROL
        let reportedDataCredits = Atomic<Int>(0)  // send: `dataReceivesUsed` as of the last CONTROL
        let finRequestedFlag = Atomic<Bool>(false) // send
        let finSentFlag = Atomic<Bool>(false)     // send
        let finReceivedFlag = Atomic<Bool>(false) // progress
        let peerDisconnectedFlag = Atomic<Bool>(false)
        let sendWorkDue = Atomic<Bool>(false)     // anyone: the send shard may have work (module header)
        let beatDue = Atomic<Bool>(false)         // progress: a heartbeat is due (cleared by send)
        let failedFlag = Atomic<Bool>(false)
        let failureBox = Mutex<RStreamError?>(nil)
        let ledger: WriteLedger
        let sendShard = Mutex(SendShard())
        let receiveShard = Mutex(ReceiveShard())
        let progressShard: Mutex<ProgressShard>

        init(ledgerStorage: UnsafeMutableBufferPointer<Int32>, events: UnsafeMutableBufferPointer<TransportEvent>,
             liveness: Liveness) {
            ledger = WriteLedger(storage: ledgerStorage)
            progressShard = Mutex(ProgressShard(events: events, liveness: liveness))
        }
    }

    private let hotRegion: PageAlignedRegion
    private let hot: UnsafeMutablePointer<HotState>

    /// Transmit slots and peer receives that data may not take: they are kept for CONTROL words,
    /// so that data can never starve a credit update.
    package static var reserve: Int { 2 }
    private static var eventBatch: Int { 16 }

    /// `peerTimeout`: how long the peer may stay silent before the stream fails with `.timedOut`
    /// (nil: for ever). Protocol v4 asks for more than a few heartbeat intervals.
    package init(transport: Transport, peer: ConnectionBlock, peerTimeout: Duration? = nil) throws(RStreamError) {
        let costs = transport.costs
        self.costs = costs
        self.transport = transport
        self.peer = peer
        localRxCredits = costs.postedReceives
        sendCapacity = transport.sendRing.count
        receiveCapacity = transport.receiveRing.count
        // One region: the hot state, then the event buffer, then the ledger's slots.
        func aligned(_ offset: Int, _ alignment: Int) -> Int { (offset + alignment - 1) / alignment * alignment }
        let eventsOffset = aligned(MemoryLayout<HotState>.size, MemoryLayout<TransportEvent>.alignment)
        let ledgerOffset = aligned(eventsOffset + Self.eventBatch * MemoryLayout<TransportEvent>.stride, MemoryLayout<Int32>.alignment)
        let region = try PageAlignedRegion(byteCount: ledgerOffset + costs.txQueueSize * MemoryLayout<Int32>.stride,
                                           node: transport.hotStateNode)
        let base = region.base
        let events = UnsafeMutableBufferPointer(start: (base + eventsOffset).bindMemory(to: TransportEvent.self, capacity: Self.eventBatch),
                                                count: Self.eventBatch)
        events.initialize(repeating: .transmitted(writeSlot: nil))
        let slots = UnsafeMutableBufferPointer(start: (base + ledgerOffset).bindMemory(to: Int32.self, capacity: costs.txQueueSize),
                                               count: costs.txQueueSize)
        hot = base.bindMemory(to: HotState.self, capacity: 1)
        hot.initialize(to: HotState(ledgerStorage: slots, events: events,
                                    liveness: Liveness(peerTimeout: peerTimeout, now: Liveness.now())))
        hotRegion = region
    }

    deinit { hot.deinitialize(count: 1) } // the region, events and slots go with `hotRegion`

    /// The node of each page of the hot state (`move_pages`).
    package var hotStatePageNodes: [Int] {
        NUMAPlacement.nodes(ofPagesIn: UnsafeRawBufferPointer(hotRegion.buffer))
    }

    private var key: UnsafeRawPointer { lockKey(self) }
    // TSan keys: one address per lock (the object, and two bytes past it, never dereferenced).
    private var sendKey: UnsafeRawPointer { key }
    private var receiveKey: UnsafeRawPointer { key + 1 }
    private var progressKey: UnsafeRawPointer { key + 2 }

    // MARK: Failure

    package var failure: RStreamError? {
        guard hot.pointee.failedFlag.load(ordering: .acquiring) else { return nil }
        return hot.pointee.failureBox.withCheckedLock(key: key + 3) { $0 }
    }

    private func fail(_ error: RStreamError) {
        let first = hot.pointee.failureBox.withCheckedLock(key: key + 3) { (box: inout RStreamError?) -> Bool in
            guard box == nil else { return false }
            box = error
            return true
        }
        guard first else { return }
        hot.pointee.failedFlag.store(true, ordering: .releasing)
        // A broken protocol or a silent peer ends the core connection too (a peer behind a cut link
        // that comes back then sees it closed).
        if error.kind == .protocolViolation || error.kind == .timedOut { transport.disconnect() }
    }

    // MARK: Progress

    /// Reads the completions waiting and acts on them; asks for a CONTROL word if one may be due,
    /// and for a heartbeat when this side has posted nothing for a beat interval; fails the stream
    /// when the peer has been silent for the peer timeout (protocol v4, "Liveness").
    /// Errors do not escape: they become `failure`, reported after the bytes that came before.
    package func progress() {
        if progressShard(), controlMayBeDue { hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) }
        // Also after transmit completions alone: a CONTROL word or a staged write waiting for
        // credits can go now.
        serveSendWork()
    }

    /// `progress` for a caller that holds the send lock: it does the send-shard work itself when
    /// it releases (`withSendLock`), so it does not try the lock it holds.
    private func progressHoldingSendLock() {
        if progressShard(), controlMayBeDue { hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) }
    }

    /// The progress shard's work; true when a word arrived (a CONTROL word may have become due).
    private func progressShard() -> Bool {
        guard !hot.pointee.failedFlag.load(ordering: .acquiring) else { return false }
        return hot.pointee.progressShard.withCheckedLock(key: progressKey) { (p: inout ProgressShard) -> Bool in
            var notified = false
            do throws(RStreamError) {
                for _ in 0..<8 {
                    let n = try transport.poll(into: p.events)
                    for i in 0..<n {
                        if handle(p.events[i], &p) { notified = true }
                        if hot.pointee.failedFlag.load(ordering: .relaxed) { return notified }
                    }
                    if n < p.events.count { break }
                }
            } catch {
                fail(error)
            }
            // Nothing is owed either way once the peer's FIN is in and ours has gone (or the peer
            // has disconnected, so nothing of ours can go).
            let finished = hot.pointee.finReceivedFlag.load(ordering: .acquiring)
                && (hot.pointee.finSentFlag.load(ordering: .acquiring) || hot.pointee.peerDisconnectedFlag.load(ordering: .acquiring))
            switch p.liveness.check(heard: notified, posted: hot.pointee.txTaken.load(ordering: .acquiring),
                                    finished: finished, now: Liveness.now()) {
            case .quiet: break
            case .beatDue:
                hot.pointee.beatDue.store(true, ordering: .releasing)
                hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent)
            case .peerSilent(let silence):
                fail(RStreamError(.timedOut, code: ETIMEDOUT, "the peer sent nothing for \(silence) (peer timeout)"))
            }
            return notified
        }
    }

    /// Handles one event under the progress lock; true when a CONTROL word may have become due.
    private func handle(_ event: TransportEvent, _ p: inout ProgressShard) -> Bool {
        switch event {
        case .transmitted(let slot):
            // The core's completions are checked like a peer's words: a core that reports more
            // than was posted ends this stream, not the program.
            guard hot.pointee.txReturned.load(ordering: .relaxed) < hot.pointee.txTaken.load(ordering: .acquiring) else {
                fail(RStreamError(.fabric, code: EPROTO, "the core reported more transmit completions than operations posted"))
                return false
            }
            hot.pointee.txReturned.add(1, ordering: .releasing)
            if let slot {
                guard let freed = hot.pointee.ledger.complete(slot: slot) else {
                    fail(RStreamError(.fabric, code: EPROTO, "the core completed write slot \(slot) out of order"))
                    return false
                }
                hot.pointee.sendFreed.add(freed, ordering: .releasing)
            }
            return false
        case .notified(let word, let usedReceive):
            if usedReceive {
                // Checked before it is counted: a count past the credits could reach a CONTROL
                // word being encoded on another thread (a trap at 512).
                let used = hot.pointee.receivesUsed.load(ordering: .relaxed) + 1
                guard used - hot.pointee.reportedCredits.load(ordering: .acquiring) <= localRxCredits else {
                    fail(.protocolViolation("peer used more than the \(localRxCredits) receives it was credited"))
                    return false
                }
                hot.pointee.receivesUsed.store(used, ordering: .releasing)
            }
            guard let word else {
                fail(.protocolViolation(costs.txPerDataWrite == 2
                    ? "a message whose payload is not 4 bytes" : "a completion without remote CQ data"))
                return false
            }
            do throws(RStreamError) {
                let decoded = try NotificationWord.decode(word)
                // After FIN the peer may still return credits and ring space for what we send
                // (half-close), but only in CONTROL words that repeat the FIN bit.
                if hot.pointee.finReceivedFlag.load(ordering: .relaxed) {
                    guard case .control(_, _, true, _) = decoded else {
                        throw .protocolViolation("word 0x\(String(word, radix: 16)) after FIN")
                    }
                }
                switch decoded {
                case .data(let n):
                    let free = receiveCapacity - (hot.pointee.received.load(ordering: .relaxed) - hot.pointee.consumed.load(ordering: .acquiring))
                    let contiguousFree = min(free, receiveCapacity - p.writeOffset)
                    guard n <= contiguousFree else {
                        throw .protocolViolation("DATA of \(n) bytes at offset \(p.writeOffset) beyond the \(contiguousFree) free bytes of the receive ring")
                    }
                    p.writeOffset += n
                    if p.writeOffset == receiveCapacity { p.writeOffset = 0 }
                    hot.pointee.received.add(n, ordering: .releasing)
                    if usedReceive { hot.pointee.dataReceivesUsed.add(1, ordering: .releasing) }
                case .control(let freed, let credits, let fin, _):
                    let inUse = hot.pointee.peerReceivesTaken.load(ordering: .acquiring) - hot.pointee.peerReceivesReturned.load(ordering: .relaxed)
                    guard credits <= inUse else {
                        throw .protocolViolation("CONTROL returns \(credits) credits; \(inUse) of \(peer.rxCredits) are in use")
                    }
                    let bytesInUse = hot.pointee.remoteWritten.load(ordering: .acquiring) - hot.pointee.remoteFreed.load(ordering: .relaxed)
                    guard freed <= bytesInUse else {
                        throw .protocolViolation("CONTROL frees \(freed) bytes; \(bytesInUse) of \(peer.ringSize) are in use")
                    }
                    hot.pointee.peerReceivesReturned.add(credits, ordering: .releasing)
                    hot.pointee.remoteFreed.add(freed, ordering: .releasing)
                    if fin { hot.pointee.finReceivedFlag.store(true, ordering: .releasing) }
                }
            } catch {
                fail(error)
            }
            return true
        case .failed(let code, let transmit):
            let finished = hot.pointee.finReceivedFlag.load(ordering: .acquiring)
                || hot.pointee.finSentFlag.load(ordering: .acquiring) && hot.pointee.peerDisconnectedFlag.load(ordering: .acquiring)
            if !transmit && finished { return false } // receives flushed at close
            var error = RStreamError.fabric(Int(code), transmit ? "a write to the peer failed" : "the connection failed")
            if error.kind == .fabric { error.kind = .connectionReset }
            fail(error)
            return false
        }
    }

    /// The core connection went away (an `FI_SHUTDOWN` event): a reset unless the FIN came first.
    package func peerDidDisconnect() {
        progress() // words already in the queue come before the disconnect
        hot.pointee.peerDisconnectedFlag.store(true, ordering: .releasing)
        if !hot.pointee.finReceivedFlag.load(ordering: .acquiring) {
            fail(RStreamError(.connectionReset, code: 104, "the peer disconnected without FIN"))
        }
    }

    // MARK: CONTROL words

    /// Asks for a CONTROL word from a shard that does not hold the send lock: sent now if the lock
    /// is free, else by its holder, which looks at `sendWorkDue` again after releasing it.
    private func requestControl() {
        // Most calls free too little to owe a CONTROL word; they pay a few loads, not a lock.
        if controlMayBeDue { hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) }
        serveSendWork() // a request standing from before (a staged write, a heartbeat) too
    }

    /// What the next CONTROL word would carry: bytes freed and receives used since the last one.
    private var unreported: (freed: Int, credits: Int, dataCredits: Int, usedNow: Int, dataNow: Int) {
        let h = hot
        let usedNow = h.pointee.receivesUsed.load(ordering: .acquiring)
        let dataNow = h.pointee.dataReceivesUsed.load(ordering: .acquiring)
        // A peer that never returns credits could let freed bytes outgrow the word's field.
        let freed = min(h.pointee.consumed.load(ordering: .acquiring) - h.pointee.reportedFreed.load(ordering: .acquiring),
                        NotificationWord.maxFreed)
        return (freed, usedNow - h.pointee.reportedCredits.load(ordering: .acquiring),
                dataNow - h.pointee.reportedDataCredits.load(ordering: .acquiring), usedNow, dataNow)
    }

    /// The rule for sending a CONTROL word: FIN wanted; half the receive ring or half the credits
    /// to return; or the peer would otherwise stall (data needs more than `reserve` credits, a
    /// CONTROL needs one); or, once the peer's FIN is in, a sixteenth of the ring freed or the last
    /// byte consumed (the peer may be waiting in its close for everything it sent to be consumed;
    /// protocol v4 allows an early CONTROL).
    /// A credit used by a CONTROL word alone returns only with others, so two idle peers never
    /// bounce CONTROL words back and forth.
    private func isDue(wantFin: Bool, beat: Bool, freed: Int, credits: Int, dataCredits: Int) -> Bool {
        guard wantFin || beat || freed > 0 || credits > 0 else { return false }
        let rx = localRxCredits
        return wantFin || beat
            || freed >= receiveCapacity / 2
            || credits >= (rx + 1) / 2
            || (dataCredits > 0 && rx - credits <= Self.reserve)
            || rx - credits <= 1
            || (freed > 0 && hot.pointee.finReceivedFlag.load(ordering: .acquiring)
                && (freed >= receiveCapacity / 16 || hot.pointee.received.load(ordering: .acquiring) == hot.pointee.consumed.load(ordering: .acquiring)))
    }

    /// A lock-free look at whether a CONTROL word may be due (it may read a flush half done, which
    /// only makes it answer yes more often).
    private var controlMayBeDue: Bool {
        let wantFin = hot.pointee.finRequestedFlag.load(ordering: .acquiring) && !hot.pointee.finSentFlag.load(ordering: .acquiring)
        let u = unreported
        return isDue(wantFin: wantFin, beat: false, freed: u.freed, credits: u.credits, dataCredits: u.dataCredits)
    }

    /// Does requested send-shard work while the send lock can be had. `serveSendWork(_:)` clears
    /// the request before it reads what to do, so a request made meanwhile is seen by the loop
    /// after it; a holder the try-lock missed runs this loop itself after releasing. It stops
    /// when what is left stands on its own (no credits, the core's queue full): that waits for
    /// completions, and the progress that reads them serves it again.
    private func serveSendWork() {
        while hot.pointee.sendWorkDue.load(ordering: .sequentiallyConsistent) {
            let served = hot.pointee.sendShard.withCheckedLockIfAvailable(key: sendKey) { (s: inout SendShard) -> (standing: Bool, returns: Int) in
                (serveSendWork(&s), returnsSeen)
            }
            guard let served else { return } // its holder serves the request after releasing
            // What stands waits for credits: if some came back while the lock was held (their
            // reader's try-lock missed), look again now rather than at the next completion.
            guard !served.standing || returnsSeen != served.returns else { return }
        }
    }

    /// Grows whenever a transmit slot or a peer receive comes back (both counters only grow).
    private var returnsSeen: Int {
        hot.pointee.txReturned.load(ordering: .acquiring) &+ hot.pointee.peerReceivesReturned.load(ordering: .acquiring)
    }

    /// Runs `body` under the send lock, then does send-shard work requested meanwhile.
    private func withSendLock<R>(_ body: (inout SendShard) throws(RStreamError) -> R) throws(RStreamError) -> R {
        let result = try hot.pointee.sendShard.withCheckedLock(key: sendKey) { (s: inout SendShard) throws(RStreamError) -> R in
            let result = try body(&s)
            if hot.pointee.sendWorkDue.load(ordering: .sequentiallyConsistent) { _ = serveSendWork(&s) }
            return result
        }
        serveSendWork()
        return result
    }

    /// The send shard's own work (send lock held): post a staged write, then a CONTROL word or
    /// heartbeat when one is due. Work that cannot go yet (a write still staged, a word without
    /// credits) keeps the request standing, so the next completion retries it even if nobody
    /// sends again; true when some is left standing.
    private func serveSendWork(_ s: inout SendShard) -> Bool {
        hot.pointee.sendWorkDue.store(false, ordering: .sequentiallyConsistent)
        guard !hot.pointee.failedFlag.load(ordering: .acquiring) else { return false }
        do throws(RStreamError) { try flushStaged(&s) } catch {
            fail(error)
            return false
        }
        let wordWaits = flushControl(&s)
        return wordWaits || !s.staged.isEmpty
    }

    /// Sends a CONTROL word when one `isDue` (send lock held); true when one is owed but could
    /// not go (its request then stands).
    @discardableResult
    private func flushControl(_ s: inout SendShard) -> Bool {
        guard !hot.pointee.failedFlag.load(ordering: .acquiring), !hot.pointee.peerDisconnectedFlag.load(ordering: .acquiring) else { return false }
        let finSent = hot.pointee.finSentFlag.load(ordering: .relaxed)
        let wantFin = hot.pointee.finRequestedFlag.load(ordering: .relaxed) && !finSent && s.staged.isEmpty
        let beat = hot.pointee.beatDue.load(ordering: .acquiring)
        let (freed, credits, dataCredits, usedNow, dataNow) = unreported
        let due = isDue(wantFin: wantFin, beat: beat, freed: freed, credits: credits, dataCredits: dataCredits)
        guard due else { return false }
        // The progress shard refuses a peer's receive beyond its credits before counting it, but a
        // CONTROL word undone below briefly reports them as returned: never encode more than exist.
        guard credits <= localRxCredits else {
            fail(.protocolViolation("peer used \(credits) receives; \(localRxCredits) were credited"))
            return false
        }
        guard txAvailable >= 1, peerReceivesAvailable >= 1 else {
            // Owed but not sendable yet: the request stands for when completions or credits come.
            hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent)
            return true
        }
        // Every word after our FIN repeats it: the only words the peer accepts after a FIN. Any
        // CONTROL word that goes while a heartbeat is due is the heartbeat.
        let word = NotificationWord.control(freed: freed, credits: credits, fin: wantFin || finSent, beat: beat).encoded
        // Counted before the post: its completion, and the peer's use of what it returns, may be
        // read by another thread at once.
        let before = (hot.pointee.reportedFreed.load(ordering: .relaxed), hot.pointee.reportedCredits.load(ordering: .relaxed),
                      hot.pointee.reportedDataCredits.load(ordering: .relaxed))
        hot.pointee.txTaken.add(1, ordering: .releasing)
        hot.pointee.peerReceivesTaken.add(1, ordering: .releasing)
        hot.pointee.reportedFreed.add(freed, ordering: .releasing)
        hot.pointee.reportedCredits.store(usedNow, ordering: .releasing)
        hot.pointee.reportedDataCredits.store(dataNow, ordering: .releasing)
        func undo() {
            hot.pointee.txTaken.subtract(1, ordering: .releasing)
            hot.pointee.peerReceivesTaken.subtract(1, ordering: .releasing)
            hot.pointee.reportedFreed.store(before.0, ordering: .releasing)
            hot.pointee.reportedCredits.store(before.1, ordering: .releasing)
            hot.pointee.reportedDataCredits.store(before.2, ordering: .releasing)
        }
        let posted: Bool
        do throws(RStreamError) { posted = try transport.send(word: word) } catch {
            undo()
            fail(error)
            return false
        }
        guard posted else {
            undo()
            hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) // the queue was full: again later
            return true
        }
        if wantFin { hot.pointee.finSentFlag.store(true, ordering: .releasing) }
        if beat { hot.pointee.beatDue.store(false, ordering: .releasing) }
        return false
    }

    // MARK: Sending

    private var txAvailable: Int {
        costs.txQueueSize - (hot.pointee.txTaken.load(ordering: .relaxed) - hot.pointee.txReturned.load(ordering: .acquiring))
    }

    private var peerReceivesAvailable: Int {
        peer.rxCredits - (hot.pointee.peerReceivesTaken.load(ordering: .relaxed) - hot.pointee.peerReceivesReturned.load(ordering: .acquiring))
    }

    private var sendRingUsed: Int { hot.pointee.sendCommitted.load(ordering: .relaxed) - hot.pointee.sendFreed.load(ordering: .acquiring) }
    private var remoteSpace: Int { peer.ringSize - (hot.pointee.remoteWritten.load(ordering: .relaxed) - hot.pointee.remoteFreed.load(ordering: .acquiring)) }

    private var dataCreditsAllowAWrite: Bool {
        txAvailable - costs.txPerDataWrite >= Self.reserve
            && (costs.peerReceivesPerDataWrite == 0 || peerReceivesAvailable - costs.peerReceivesPerDataWrite >= Self.reserve)
    }

    /// Bytes one write may carry now (send lock held): 0 when credits, the ledger, a staged write
    /// or either ring stops it.
    private func writableSpan(_ s: borrowing SendShard) -> Int {
        guard s.staged.isEmpty, !hot.pointee.finRequestedFlag.load(ordering: .relaxed), !hot.pointee.failedFlag.load(ordering: .acquiring),
              !hot.pointee.ledger.isFull, dataCreditsAllowAWrite
        else { return 0 }
        return ringSpan(s)
    }

    /// Bytes the rings let the next write carry: contiguous free bytes of both rings.
    private func ringSpan(_ s: borrowing SendShard) -> Int {
        let localFree = min(sendCapacity - sendRingUsed, sendCapacity - s.writeOffset)
        return min(localFree, remoteSpace, peer.ringSize - s.remoteOffset)
    }

    private func checkSendable() throws(RStreamError) {
        if hot.pointee.finRequestedFlag.load(ordering: .acquiring) { throw RStreamError(.closed, code: 108, "send after shutdown") }
        if let failure { throw failure }
    }

    /// Accounts for `n` bytes just placed at the send ring's write offset and posts their write.
    private func commit(_ n: Int, _ s: inout SendShard) throws(RStreamError) {
        assert(n > 0 && n <= ringSpan(s) && s.staged.count < 3)
        var write = StagedWrite(sendOffset: s.writeOffset, length: n, remoteOffset: s.remoteOffset,
                                slot: hot.pointee.ledger.push(length: n))
        s.writeOffset += n
        if s.writeOffset == sendCapacity { s.writeOffset = 0 }
        hot.pointee.sendCommitted.add(n, ordering: .releasing)
        hot.pointee.remoteWritten.add(n, ordering: .releasing)
        s.remoteOffset += n
        if s.remoteOffset == peer.ringSize { s.remoteOffset = 0 }
        hot.pointee.txTaken.add(costs.txPerDataWrite, ordering: .releasing)
        hot.pointee.peerReceivesTaken.add(costs.peerReceivesPerDataWrite, ordering: .releasing)
        if s.staged.isEmpty {
            // The usual case: posted at once, staged only if the core refuses it.
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
    private func flushStaged(_ s: inout SendShard) throws(RStreamError) {
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
                    hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent)
                    return
                }
            }
            s.staged.removeFirst()
        }
        if !s.staged.isEmpty { hot.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) }
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
                let span = min(writableSpan(s), left)
                if span > 0 { return span }
                progressHoldingSendLock()
                return min(writableSpan(s), left)
            }
        }
        if done == 0, let failure { throw failure }
        return done
    }

    /// Copies `bytes` into the send ring, one write per span `nextSpan` allows (0: stop), and posts
    /// each write (send lock held); returns the bytes taken. A failure fails the stream and stops.
    private func copyIn(_ bytes: UnsafeRawBufferPointer, _ s: inout SendShard,
                        nextSpan: (inout SendShard, Int) -> Int) -> Int {
        var done = 0
        do throws(RStreamError) {
            while done < bytes.count {
                let span = nextSpan(&s, bytes.count - done)
                guard span > 0 else { break }
                (transport.sendRing.baseAddress! + s.writeOffset).copyMemory(from: bytes.baseAddress! + done, byteCount: span)
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
            if writableCount(s) < bytes.count { progressHoldingSendLock() }
            guard writableCount(s) >= bytes.count else { return 0 }
            // `writableCount` promised the credits and ring space for all of it (at most three
            // writes): a write staged on the way does not stop the rest of the record.
            return copyIn(bytes, &s) { (s, left) in
                let span = min(ringSpan(s), left)
                assert(span > 0, "writableCount promised room for \(bytes.count) bytes")
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
            let span = writableSpan(s)
            guard span > 0 else { return 0 }
            let region = UnsafeMutableRawBufferPointer(start: transport.sendRing.baseAddress! + s.writeOffset, count: span)
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

    /// Bytes a send could take now without blocking.
    package var writableCount: Int {
        let count = hot.pointee.sendShard.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Int in writableCount(s) }
        serveSendWork() // a request whose try-lock this hold made miss
        return count
    }

    private func writableCount(_ s: borrowing SendShard) -> Int {
        let span = writableSpan(s)
        guard span > 0 else { return 0 }
        // Ledger slots retire in posting order, credits as completions come: both must allow it.
        var writes = min((txAvailable - Self.reserve) / costs.txPerDataWrite, hot.pointee.ledger.freeSlots)
        if costs.peerReceivesPerDataWrite > 0 {
            writes = min(writes, (peerReceivesAvailable - Self.reserve) / costs.peerReceivesPerDataWrite)
        }
        // Both rings wrap at most once each, so three writes carry everything that is free.
        return writes >= 3 ? min(sendCapacity - sendRingUsed, remoteSpace) : span
    }

    /// A hint for waiters, from the counters alone (no lock): the stream may take bytes now.
    package var mayBeWritable: Bool {
        hot.pointee.failedFlag.load(ordering: .acquiring) || hot.pointee.finRequestedFlag.load(ordering: .acquiring)
            || (sendRingUsed < sendCapacity && remoteSpace > 0 && dataCreditsAllowAWrite)
    }

    /// Starts the FIN: sent after every byte already accepted, as soon as credits allow.
    package func shutdown() {
        guard !hot.pointee.finRequestedFlag.load(ordering: .acquiring) else { return }
        _ = try? withSendLock { (s: inout SendShard) in
            hot.pointee.finRequestedFlag.store(true, ordering: .releasing)
            if hot.pointee.finSentFlag.load(ordering: .relaxed) { return }
            progressHoldingSendLock()
            _ = serveSendWork(&s)
        }
    }

    /// True once every write and word this side posted has completed locally.
    package var isQuiescent: Bool {
        let quiescent = hot.pointee.sendShard.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Bool in
            s.staged.isEmpty && hot.pointee.txReturned.load(ordering: .acquiring) == hot.pointee.txTaken.load(ordering: .relaxed)
        }
        serveSendWork() // a request whose try-lock this hold made miss
        return quiescent
    }
    package var hasSentFin: Bool { hot.pointee.finSentFlag.load(ordering: .acquiring) }
    package var hasReceivedFin: Bool { hot.pointee.finReceivedFlag.load(ordering: .acquiring) }
    package var isShutdown: Bool { hot.pointee.finRequestedFlag.load(ordering: .acquiring) }

    /// True once the peer has consumed, and returned the space of, every byte this side wrote.
    package var peerHasConsumedEverything: Bool {
        hot.pointee.remoteFreed.load(ordering: .acquiring) == hot.pointee.remoteWritten.load(ordering: .acquiring)
    }

    /// A peer silent this long while our bytes wait is taken for one that is not reading now.
    package static var closeQuietPeriod: Duration { .milliseconds(250) }

    /// What a lingering close waits for: the FIN and every write gone, and the peer done with the
    /// bytes, or quiet (not reading: it sends no CONTROL words), or gone, or failed. Closing the
    /// core connection while the peer still reads and returns space can lose its tail: on `tcp` a
    /// socket closed while the peer's words still arrive resets the connection, and the peer's
    /// kernel drops what it had not read.
    package var hasFinishedClosing: Bool {
        if failure != nil || peerHasDisconnected { return true }
        guard hasSentFin && isQuiescent else { return false }
        if peerHasConsumedEverything { return true }
        let silence = hot.pointee.progressShard.withCheckedLock(key: progressKey) { (p: inout ProgressShard) -> Duration in p.liveness.silence }
        return silence >= Self.closeQuietPeriod
    }

    /// The invariants of the header that the counters and shards can show, as sentences for each
    /// one broken (empty: all hold). Only meaningful while no other thread is in the engine (the
    /// counters of different shards move independently): the single-threaded engine tests and the
    /// fuzzer call it after every step.
    package func brokenInvariants() -> [String] {
        var broken: [String] = []
        func check(_ what: String, _ low: Int, _ high: Int, _ value: Int) {
            if value < low || value > high { broken.append("\(what) \(value) outside \(low)...\(high)") }
        }
        let h = hot
        check("tx slots in use", 0, costs.txQueueSize, h.pointee.txTaken.load(ordering: .acquiring) - h.pointee.txReturned.load(ordering: .acquiring))
        check("peer receives in use", 0, peer.rxCredits,
              h.pointee.peerReceivesTaken.load(ordering: .acquiring) - h.pointee.peerReceivesReturned.load(ordering: .acquiring))
        check("peer ring bytes in use", 0, peer.ringSize, h.pointee.remoteWritten.load(ordering: .acquiring) - h.pointee.remoteFreed.load(ordering: .acquiring))
        check("receive ring bytes held", 0, receiveCapacity, h.pointee.received.load(ordering: .acquiring) - h.pointee.consumed.load(ordering: .acquiring))
        check("send ring bytes held", 0, sendCapacity, h.pointee.sendCommitted.load(ordering: .acquiring) - h.pointee.sendFreed.load(ordering: .acquiring))
        check("unreported receives", 0, localRxCredits, h.pointee.receivesUsed.load(ordering: .acquiring) - h.pointee.reportedCredits.load(ordering: .acquiring))
        let staged = h.pointee.sendShard.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Int in
            check("send write offset", 0, sendCapacity - 1, s.writeOffset)
            check("remote write offset", 0, peer.ringSize - 1, s.remoteOffset)
            return s.staged.count
        }
        check("staged writes", 0, 3, staged)
        h.pointee.receiveShard.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) in check("read offset", 0, receiveCapacity - 1, r.readOffset) }
        h.pointee.progressShard.withCheckedLock(key: progressKey) { (p: inout ProgressShard) in check("receive write offset", 0, receiveCapacity - 1, p.writeOffset) }
        if h.pointee.finSentFlag.load(ordering: .acquiring) && !h.pointee.finRequestedFlag.load(ordering: .acquiring) { broken.append("FIN sent but never asked for") }
        return broken
    }

    // MARK: Receiving

    /// What a receive reports when no bytes are waiting: end of stream, the failure, or would block.
    package func outcomeWhenEmpty() throws(RStreamError) -> ReceiveOutcome {
        if let failure { throw failure }
        if hot.pointee.finReceivedFlag.load(ordering: .acquiring) {
            // The FIN is handled after the bytes before it; look again in case one landed since.
            return readableCount > 0 ? .wouldBlock : .endOfStream
        }
        return .wouldBlock
    }

    /// Copies `count` received bytes (no more than are in the ring) out of the receive ring from
    /// `offset` into `destination`, wrapping at most once; returns the offset after them.
    @inline(__always)
    private func copyOut(_ count: Int, from offset: Int, to destination: UnsafeMutableRawPointer) -> Int {
        assert(count <= receiveCapacity && offset < receiveCapacity, "copy of \(count) bytes at \(offset)")
        let ring = transport.receiveRing.baseAddress!
        let first = min(count, receiveCapacity - offset)
        destination.copyMemory(from: ring + offset, byteCount: first)
        if first < count { (destination + first).copyMemory(from: ring, byteCount: count - first) }
        let end = offset + count
        return end >= receiveCapacity ? end - receiveCapacity : end
    }

    /// Copies received bytes into `buffer`; at least one byte, or would block, or end of stream
    /// after the peer's FIN and every byte before it. A failure is reported once the bytes that
    /// arrived before it have been read.
    package func receive(into buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        precondition(buffer.count > 0, "receive into an empty buffer")
        progress()
        let done = hot.pointee.receiveShard.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let used = hot.pointee.received.load(ordering: .acquiring) - hot.pointee.consumed.load(ordering: .relaxed)
            let done = min(used, buffer.count)
            if done > 0 {
                r.readOffset = copyOut(done, from: r.readOffset, to: buffer.baseAddress!)
                hot.pointee.consumed.add(done, ordering: .releasing)
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
        progress()
        let n = hot.pointee.receiveShard.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let used = hot.pointee.received.load(ordering: .acquiring) - hot.pointee.consumed.load(ordering: .relaxed)
            guard used > 0 else { return -1 }
            let region = UnsafeRawBufferPointer(start: transport.receiveRing.baseAddress! + r.readOffset,
                                                count: min(used, receiveCapacity - r.readOffset))
            let n = body(region)
            precondition(n >= 0 && n <= region.count, "consumed \(n) bytes of \(region.count)")
            r.readOffset += n
            if r.readOffset == receiveCapacity { r.readOffset = 0 }
            hot.pointee.consumed.add(n, ordering: .releasing)
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
        progress()
        let available = hot.pointee.receiveShard.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Int in
            let used = hot.pointee.received.load(ordering: .acquiring) - hot.pointee.consumed.load(ordering: .relaxed)
            let copied = min(used, buffer.count)
            if copied > 0 { _ = copyOut(copied, from: r.readOffset, to: buffer.baseAddress!) }
            return used
        }
        guard available > 0 else { return try outcomeWhenEmpty() }
        return .bytes(buffer.count == 0 ? available : min(available, buffer.count))
    }

    /// True once the core connection went away (`FI_SHUTDOWN`), whoever read the event.
    package var peerHasDisconnected: Bool { hot.pointee.peerDisconnectedFlag.load(ordering: .acquiring) }

    /// Receives exactly `buffer.count` bytes, or none: would block until that many are there, or
    /// end of stream (or the failure) once they can no longer come, even if a shorter tail is
    /// still readable (`receive(into:)` hands it out).
    package func receive(exactly buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        progress()
        let taken = hot.pointee.receiveShard.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) -> Bool in
            let used = hot.pointee.received.load(ordering: .acquiring) - hot.pointee.consumed.load(ordering: .relaxed)
            guard used >= buffer.count else { return false }
            r.readOffset = copyOut(buffer.count, from: r.readOffset, to: buffer.baseAddress!)
            hot.pointee.consumed.add(buffer.count, ordering: .releasing)
            return true
        }
        if taken {
            requestControl()
            return .bytes(buffer.count)
        }
        // Every byte before a FIN or a failure is counted before its flag is set, so once either is
        // seen, what is readable is all that will ever be (looked at again in case a byte landed
        // after the first look).
        guard hot.pointee.finReceivedFlag.load(ordering: .acquiring) || hot.pointee.failedFlag.load(ordering: .acquiring),
              readableCount < buffer.count else { return .wouldBlock }
        if let failure { throw failure }
        return .endOfStream
    }

    /// Bytes a receive could return now without blocking.
    package var readableCount: Int { hot.pointee.received.load(ordering: .acquiring) - hot.pointee.consumed.load(ordering: .acquiring) }

    /// True when a receive would not block: bytes, end of stream or a failure to report.
    package var isReadable: Bool {
        readableCount > 0 || hot.pointee.finReceivedFlag.load(ordering: .acquiring) || hot.pointee.failedFlag.load(ordering: .acquiring)
    }

    /// Runs `body` under the progress lock (for arming a wait set: completions are only taken there).
    package func withProgressLock<R>(_ body: () -> R) -> R {
        hot.pointee.progressShard.withCheckedLock(key: progressKey) { _ in body() }
    }
}
