import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a receive found.
@usableFromInline
package enum ReceiveOutcome: Equatable, Sendable {
    case bytes(Int)
    case wouldBlock
    case endOfStream
}

/// The protocol-v4 state of one connected stream over any `StreamTransport`, sharded so that any
/// number of threads may send, receive and drive progress at once (`FI_THREAD_SAFE`). Its parts:
/// the flow counters (`FlowCounters`), the peer-word check (`PeerWordCheck`), the CONTROL rule
/// (`ControlSchedule`), the send path (StreamEngine+Sending), the receive path
/// (StreamEngine+Receiving), and waiting (StreamEngine+Waiting). This file holds the shards,
/// failure, and progress.
///
/// Three locks, each guarding one shard:
/// - send: the send ring's write offset, the remote write offset, the staged writes, FIN, and what
///   the last CONTROL word reported; every word this side posts (data writes *and* CONTROL words)
///   is posted under it, so tx slots and peer receives have a single consumer;
/// - receive: the receive ring's read offset;
/// - progress: reading completions, the receive ring's write offset, liveness.
///
/// The counters that cross shards are monotonic atomics with exactly one writer each, grouped on
/// cache lines by writer (`FlowCounters`). Lock order: receive → progress, send → progress; the
/// progress shard never waits for the send lock (it only tries it), and the receive shard never
/// takes it but by trying. Work that only the send shard may do (a CONTROL word or heartbeat that
/// a non-sender finds due, a write whose post found the queue full) is requested with
/// `sendWorkDue` and done by whoever holds, or next takes, the send lock.
///
/// Invariants: those of `FlowCounters` (checked in debug builds after each progress step, send and
/// receive), and, checked by `brokenInvariants` after every step of the single-threaded engine
/// tests and the fuzzer:
/// - every offset lies inside its ring;
/// - once failed, no more words are posted;
/// - staged writes are posted oldest first, before anything else the send shard posts; a new write
///   is staged behind them only within one whole record (`sendWhole`, at most three writes); a
///   write's DATA word always follows its bytes (iWarp posts them in two steps).
@usableFromInline
package final class StreamEngine: @unchecked Sendable {
    package let transport: any StreamTransport
    package let peer: ConnectionBlock
    package let costs: TransportCosts
    // The sizes, kept once in the flow counters' limits.
    package var localRxCredits: Int { counters.limits.localRxCredits }
    var sendCapacity: Int { counters.limits.sendCapacity }
    var receiveCapacity: Int { counters.limits.receiveCapacity }
    /// The rings' base addresses, read once (the transport owns them for the engine's life).
    let sendBase: UnsafeMutableRawPointer
    let receiveBase: UnsafeRawPointer
    let counters: FlowCounters
    let schedule: ControlSchedule
    /// Empty looks skipped by `progressIfNews` (any thread, relaxed).
    let quietSkipCount = Atomic<Int>(0)

    /// A data write fully accounted for whose post found the queue full; posted before anything
    /// else the send shard does. `bytesPosted`: its bytes went, its DATA word did not. (Rare: the
    /// tx credits mirror the transport's queue, but a core may refuse for reasons of its own.)
    struct StagedWrite {
        var sendOffset: Int
        var length: Int
        var remoteOffset: Int
        var slot: Int
        var bytesPosted = false
    }

    struct SendShard {
        var writeOffset = 0
        var remoteOffset = 0
        /// Oldest first; capacity for the three writes of one record, reserved once.
        var staged: [StagedWrite]
        init() {
            staged = []
            staged.reserveCapacity(3)
        }
    }
    struct ReceiveShard {
        var readOffset = 0
    }
    // Its buffer lies in the engine's hot region and is touched only under the progress lock.
    struct ProgressShard: @unchecked Sendable {
        var writeOffset = 0
        let events: UnsafeMutableBufferPointer<TransportEvent>
        var liveness: Liveness
    }

    /// The endpoint's hot state, initialised in place in one page-aligned region on the rings'
    /// NUMA node (`Atomic` and `Mutex` need only a stable address): the four counter groups, each
    /// lock with its shard on lines of its own, the failure, the write ledger, the event buffer.
    private let hotRegion: PageAlignedRegion
    let sendShard: UnsafeMutablePointer<Mutex<SendShard>>
    let receiveShard: UnsafeMutablePointer<Mutex<ReceiveShard>>
    let progressShard: UnsafeMutablePointer<Mutex<ProgressShard>>
    private let failureBox: UnsafeMutablePointer<Mutex<RStreamError?>>
    let ledger: UnsafeMutablePointer<WriteLedger>

    /// Transmit slots and peer receives that data may not take: they are kept for CONTROL words,
    /// so that data can never starve a credit update.
    package static var reserve: Int { 2 }
    private static var eventBatch: Int { 16 }

    /// `peerTimeout`: how long the peer may stay silent before the stream fails with `.timedOut`
    /// (nil: for ever). Protocol v4 asks for more than a few heartbeat intervals.
    package init(transport: any StreamTransport, peer: ConnectionBlock, peerTimeout: Duration? = nil) throws(RStreamError) {
        let costs = transport.costs
        self.costs = costs
        self.transport = transport
        self.peer = peer
        let sendCapacity = transport.sendRing.count
        let receiveCapacity = transport.receiveRing.count
        sendBase = transport.sendRing.baseAddress!
        receiveBase = transport.receiveRing.baseAddress!
        precondition(!transport.sendRingIsPeerRing || sendCapacity == peer.ringSize,
                     "a direct-write region must be the peer's whole ring")

        // One region, laid out in 128-byte steps: counters, each lock, the failure, the ledger,
        // then the event buffer and the ledger's slots.
        var size = 0
        func take(_ bytes: Int, alignment: Int = FlowCounters.groupStride) -> Int {
            let offset = (size + alignment - 1) / alignment * alignment
            size = offset + bytes
            return offset
        }
        let countersAt = take(FlowCounters.layout.size)
        let sendAt = take(MemoryLayout<Mutex<SendShard>>.size)
        let receiveAt = take(MemoryLayout<Mutex<ReceiveShard>>.size)
        let progressAt = take(MemoryLayout<Mutex<ProgressShard>>.size)
        let failureAt = take(MemoryLayout<Mutex<RStreamError?>>.size)
        let ledgerAt = take(MemoryLayout<WriteLedger>.size)
        let eventsAt = take(Self.eventBatch * MemoryLayout<TransportEvent>.stride)
        let slotsAt = take(costs.txQueueSize * MemoryLayout<Int32>.stride)
        let region = try PageAlignedRegion(byteCount: size, node: transport.ringNode)
        let base = region.base

        counters = FlowCounters(initializingAt: base + countersAt, limits: FlowLimits(
            txQueueSize: costs.txQueueSize, peerRxCredits: peer.rxCredits, peerRingSize: peer.ringSize,
            localRxCredits: costs.postedReceives, sendCapacity: sendCapacity, receiveCapacity: receiveCapacity))
        schedule = ControlSchedule(receiveCapacity: receiveCapacity, localRxCredits: costs.postedReceives, reserve: Self.reserve,
                                   controlWordsPerRing: costs.controlWordsPerRing)
        let events = UnsafeMutableBufferPointer(
            start: (base + eventsAt).bindMemory(to: TransportEvent.self, capacity: Self.eventBatch), count: Self.eventBatch)
        events.initialize(repeating: .transmitted(writeSlot: nil))
        let slots = UnsafeMutableBufferPointer(
            start: (base + slotsAt).bindMemory(to: Int32.self, capacity: costs.txQueueSize), count: costs.txQueueSize)
        sendShard = (base + sendAt).bindMemory(to: Mutex<SendShard>.self, capacity: 1)
        sendShard.initialize(to: Mutex(SendShard()))
        receiveShard = (base + receiveAt).bindMemory(to: Mutex<ReceiveShard>.self, capacity: 1)
        receiveShard.initialize(to: Mutex(ReceiveShard()))
        progressShard = (base + progressAt).bindMemory(to: Mutex<ProgressShard>.self, capacity: 1)
        progressShard.initialize(to: Mutex(ProgressShard(events: events, liveness: Liveness(peerTimeout: peerTimeout, nowTicks: Liveness.nowTicks()))))
        failureBox = (base + failureAt).bindMemory(to: Mutex<RStreamError?>.self, capacity: 1)
        failureBox.initialize(to: Mutex(nil))
        ledger = (base + ledgerAt).bindMemory(to: WriteLedger.self, capacity: 1)
        ledger.initialize(to: WriteLedger(storage: slots))
        hotRegion = region
    }

    deinit {
        // The region, events and slots go with `hotRegion`.
        ledger.deinitialize(count: 1)
        failureBox.deinitialize(count: 1)
        progressShard.deinitialize(count: 1)
        receiveShard.deinitialize(count: 1)
        sendShard.deinitialize(count: 1)
        counters.deinitialize()
    }

    /// The node of each page of the hot state (`move_pages`).
    package var hotStatePageNodes: [Int] {
        NUMAPlacement.nodes(ofPagesIn: UnsafeRawBufferPointer(hotRegion.buffer))
    }

    /// How many pages of the receive ring are resident (`mincore`, touching none).
    package var receiveRingResidentPages: Int { NUMAPlacement.residentPages(in: transport.receiveRing) }

    /// The policies that place the send and receive rings' pages (`get_mempolicy`): where pages
    /// that are not there yet will go.
    package var ringBindings: (send: (mode: Int32, nodes: [Int])?, receive: (mode: Int32, nodes: [Int])?) {
        (NUMAPlacement.binding(at: transport.sendRing.baseAddress!), NUMAPlacement.binding(at: transport.receiveRing.baseAddress!))
    }

    private var key: UnsafeRawPointer { lockKey(self) }
    // TSan keys: one address per lock (the object, and bytes past it, never dereferenced).
    var sendKey: UnsafeRawPointer { key }
    var receiveKey: UnsafeRawPointer { key + 1 }
    var progressKey: UnsafeRawPointer { key + 2 }
    private var failureKey: UnsafeRawPointer { key + 3 }

    var signals: UnsafeMutablePointer<EngineSignals> { counters.signals }

    /// Asks the send shard for work (see the header).
    @inline(__always)
    func requestSendWork() { signals.pointee.sendWorkDue.store(true, ordering: .sequentiallyConsistent) }

    // MARK: Failure

    package var failure: RStreamError? {
        guard signals.pointee.failed.load(ordering: .acquiring) else { return nil }
        return failureBox.pointee.withCheckedLock(key: failureKey) { $0 }
    }

    var hasFailed: Bool { signals.pointee.failed.load(ordering: .acquiring) }

    func fail(_ error: RStreamError) {
        let first = failureBox.pointee.withCheckedLock(key: failureKey) { (box: inout RStreamError?) -> Bool in
            guard box == nil else { return false }
            box = error
            return true
        }
        guard first else { return }
        signals.pointee.failed.store(true, ordering: .releasing)
        // A broken protocol or a silent peer ends the connection too (a peer behind a cut link
        // that comes back then sees it closed).
        if error.kind == .protocolViolation || error.kind == .timedOut { transport.disconnect() }
        transport.waitSet?.ring() // sleepers wake to report it
        let observer = failureWatch.withCheckedLock(key: lockKey(self)) { (w: inout FailureWatch) -> (@Sendable (RStreamError) -> Void)? in
            guard !w.notified, let observer = w.observer else { return nil }
            w.notified = true
            return observer
        }
        observer?(error)
    }

    /// Who hears of the stream's failure, once (the public layer's log): set at most once.
    private struct FailureWatch {
        var observer: (@Sendable (RStreamError) -> Void)?
        var notified = false
    }

    private let failureWatch = Mutex(FailureWatch())

    /// Calls `observer` once when the stream fails, or at once if it has: how the public layer
    /// logs a failure with nothing on the data path. (The failure is read under the watch's lock,
    /// which `fail` takes only after setting it: either this sees it, or `fail` sees the observer.)
    package func onFailure(_ observer: @escaping @Sendable (RStreamError) -> Void) {
        let failed = failureWatch.withCheckedLock(key: lockKey(self)) { (w: inout FailureWatch) -> RStreamError? in
            w.observer = observer
            guard !w.notified, let failure = self.failure else { return nil }
            w.notified = true
            return failure
        }
        if let failed { observer(failed) }
    }

    // MARK: Progress

    /// Reads the completions waiting and acts on them; asks for a CONTROL word if one may be due,
    /// and for a heartbeat when this side has posted nothing for a beat interval; fails the stream
    /// when the peer has been silent for the peer timeout (protocol v4, "Liveness").
    /// Errors do not escape: they become `failure`, reported after the bytes that came before.
    /// Drives progress; true when a word of the peer arrived.
    @discardableResult
    package func progress() -> Bool {
        let heard = progressShardStep()
        if heard, controlMayBeDue { requestSendWork() }
        // Also after transmit completions alone: a CONTROL word or a staged write waiting for
        // credits can go now.
        serveSendWork()
        counters.checkInvariants()
        return heard
    }

    /// `progress` for a caller that only wants what may have arrived (a receive, a peek): skipped
    /// when the transport says nothing can have (`mayHaveNews`) and no send-shard work stands,
    /// except every `quietSkips`-th time, so that liveness (heartbeats, the peer timeout, a peer
    /// gone) is still judged while a caller spins on an empty stream.
    @inline(__always)
    func progressIfNews() {
        if transport.mayHaveNews || signals.pointee.sendWorkDue.load(ordering: .relaxed) {
            progress()
            return
        }
        // Racy on purpose: two spinners may count one skip twice, which only looks sooner.
        let skipped = quietSkipCount.load(ordering: .relaxed) &+ 1
        quietSkipCount.store(skipped, ordering: .relaxed)
        if skipped & (Self.quietSkips - 1) == 0 { progress() }
    }

    /// Empty looks between two full progress steps of a spinning receiver (a power of two).
    static var quietSkips: Int { 64 }

    /// `progress` for a caller that holds the send lock: it does the send-shard work itself when
    /// it releases (`withSendLock`), so it does not try the lock it holds.
    func progressHoldingSendLock() {
        if progressShardStep(), controlMayBeDue { requestSendWork() }
    }

    /// The progress shard's work; true when a word arrived (a CONTROL word may have become due).
    private func progressShardStep() -> Bool {
        guard !hasFailed else { return false }
        return progressShard.pointee.withCheckedLock(key: progressKey) { (p: inout ProgressShard) -> Bool in
            var notified = false
            do throws(RStreamError) {
                for _ in 0..<8 {
                    let n = try transport.poll(into: p.events)
                    for i in 0..<n {
                        if handle(p.events[i], &p) { notified = true }
                        if signals.pointee.failed.load(ordering: .relaxed) { return notified }
                    }
                    if n < p.events.count { break }
                }
            } catch {
                fail(error)
            }
            switch p.liveness.check(heard: notified, posted: counters.send.pointee.txTaken.load(ordering: .acquiring),
                                    finished: isFinished, nowTicks: Liveness.nowTicks()) {
            case .quiet: break
            case .beatDue:
                signals.pointee.beatDue.store(true, ordering: .releasing)
                requestSendWork()
            case .peerSilent(let silence):
                fail(RStreamError(.timedOut, code: ETIMEDOUT, "the peer sent nothing for \(silence) (peer timeout)"))
            }
            return notified
        }
    }

    /// Nothing is owed either way once the peer's FIN is in and ours has gone (or the peer has
    /// disconnected, so nothing of ours can go).
    private var isFinished: Bool {
        counters.progress.pointee.finReceived.load(ordering: .acquiring)
            && (counters.send.pointee.finSent.load(ordering: .acquiring) || signals.pointee.peerDisconnected.load(ordering: .acquiring))
    }

    /// Handles one event under the progress lock; true when a CONTROL word may have become due.
    private func handle(_ event: TransportEvent, _ p: inout ProgressShard) -> Bool {
        let pc = counters.progress
        switch event {
        case .transmitted(let slot):
            // The transport's completions are checked like a peer's words: one that reports more
            // than was posted ends this stream, not the program.
            guard pc.pointee.txReturned.load(ordering: .relaxed) < counters.send.pointee.txTaken.load(ordering: .acquiring) else {
                fail(RStreamError(.fabric, code: EPROTO, "the transport reported more transmit completions than operations posted"))
                return false
            }
            pc.pointee.txReturned.advance(by: 1)
            if let slot {
                guard let freed = ledger.pointee.complete(slot: slot) else {
                    fail(RStreamError(.fabric, code: EPROTO, "the transport completed write slot \(slot) out of order"))
                    return false
                }
                pc.pointee.sendFreed.advance(by: freed)
            }
            return false
        case .notified(let word, let usedReceive):
            if usedReceive {
                // Checked before it is counted: a count past the credits could reach a CONTROL
                // word being encoded on another thread (a trap at 512).
                let used = pc.pointee.receivesUsed.load(ordering: .relaxed) + 1
                guard used - counters.send.pointee.reportedCredits.load(ordering: .acquiring) <= localRxCredits else {
                    fail(.protocolViolation("peer used more than the \(localRxCredits) receives it was credited"))
                    return false
                }
                pc.pointee.receivesUsed.store(used, ordering: .releasing)
            }
            guard let word else {
                fail(.protocolViolation(costs.txPerDataWrite == 2
                    ? "a message whose payload is not 4 bytes" : "a notification without a word"))
                return false
            }
            do throws(RStreamError) {
                let effect: PeerWordEffect
                switch try PeerWordCheck.check(word, finReceived: pc.pointee.finReceived.load(ordering: .relaxed)) {
                case .data(let n):
                    effect = try PeerWordCheck.checkData(n, contiguousFree: min(counters.receiveFree, receiveCapacity - p.writeOffset),
                                                         writeOffset: p.writeOffset)
                case .control(let freed, let credits, let fin, _):
                    let inUse = counters.inUseForControl
                    effect = try PeerWordCheck.checkControl(freed: freed, credits: credits, fin: fin, peerReceivesInUse: inUse.receives,
                                                            peerRxCredits: peer.rxCredits, peerBytesInUse: inUse.bytes, peerRingSize: peer.ringSize)
                }
                switch effect {
                case .placed(let n):
                    p.writeOffset += n
                    if p.writeOffset == receiveCapacity { p.writeOffset = 0 }
                    pc.pointee.received.advance(by: n)
                    if usedReceive { pc.pointee.dataReceivesUsed.advance(by: 1) }
                case .returned(let freed, let credits, let fin):
                    pc.pointee.peerReceivesReturned.advance(by: credits)
                    pc.pointee.remoteFreed.advance(by: freed)
                    if fin { pc.pointee.finReceived.store(true, ordering: .releasing) }
                }
            } catch {
                fail(error)
            }
            return true
        case .failed(let code, let transmit):
            let finished = pc.pointee.finReceived.load(ordering: .acquiring)
                || counters.send.pointee.finSent.load(ordering: .acquiring) && signals.pointee.peerDisconnected.load(ordering: .acquiring)
            if !transmit && finished { return false } // receives flushed at close
            var error = RStreamError.fabric(Int(code), transmit ? "a write to the peer failed" : "the connection failed")
            if error.kind == .fabric { error.kind = .connectionReset }
            fail(error)
            return false
        }
    }

    /// The connection went away (a disconnect event, a peer process gone): a reset unless the FIN
    /// came first.
    package func peerDidDisconnect() {
        progress() // words already in the queue come before the disconnect
        // The failure first: a send racing this sees the reset, not "the peer has left".
        if !counters.progress.pointee.finReceived.load(ordering: .acquiring) {
            fail(RStreamError(.connectionReset, code: 104, "the peer disconnected without FIN"))
        }
        signals.pointee.peerDisconnected.store(true, ordering: .releasing)
        transport.waitSet?.ring()
    }

    /// Runs `body` under the progress lock (for arming a wait set: completions are only taken there).
    package func withProgressLock<R>(_ body: () -> R) -> R {
        progressShard.pointee.withCheckedLock(key: progressKey) { _ in body() }
    }

    // MARK: Invariants

    /// Every invariant of the header and of `FlowCounters`, as sentences for each one broken
    /// (empty: all hold). The offsets are only meaningful while no other thread is in the engine:
    /// the single-threaded engine tests and the fuzzer call it after every step.
    package func brokenInvariants() -> [String] {
        var broken = counters.brokenInvariants()
        func check(_ what: String, _ low: Int, _ high: Int, _ value: Int) {
            if value < low || value > high { broken.append("\(what) \(value) outside \(low)...\(high)") }
        }
        let staged = sendShard.pointee.withCheckedLock(key: sendKey) { (s: inout SendShard) -> Int in
            check("send write offset", 0, sendCapacity - 1, s.writeOffset)
            check("remote write offset", 0, peer.ringSize - 1, s.remoteOffset)
            if transport.sendRingIsPeerRing && s.writeOffset != s.remoteOffset {
                broken.append("direct writes at \(s.writeOffset) and \(s.remoteOffset) apart")
            }
            return s.staged.count
        }
        check("staged writes", 0, 3, staged)
        receiveShard.pointee.withCheckedLock(key: receiveKey) { (r: inout ReceiveShard) in check("read offset", 0, receiveCapacity - 1, r.readOffset) }
        progressShard.pointee.withCheckedLock(key: progressKey) { (p: inout ProgressShard) in check("receive write offset", 0, receiveCapacity - 1, p.writeOffset) }
        return broken
    }
}
