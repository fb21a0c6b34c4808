import Synchronization

extension Atomic where Value == Int {
    /// Moves a counter that only the calling shard writes: a load and a releasing store, not a
    /// read-modify-write (on x86 a locked instruction waits for every store before it, such as
    /// the stores into a peer's cache lines just made, to complete).
    @inline(__always)
    func advance(by n: Int) {
        store(load(ordering: .relaxed) &+ n, ordering: .releasing)
    }
}

/// The counters only the send shard writes (under the send lock). Each group of counters lies on
/// cache lines of its own (`FlowCounters.layout`), so that a sender's writes never evict the
/// lines a progress driver or a receiver is writing.
struct SendCounters: ~Copyable {
    let committed = Atomic<Int>(0)           // bytes placed in the send ring
    let txTaken = Atomic<Int>(0)             // transmit slots used
    let peerReceivesTaken = Atomic<Int>(0)   // peer receives our words used
    let remoteWritten = Atomic<Int>(0)       // bytes written to the peer's ring
    let reportedFreed = Atomic<Int>(0)       // `consumed` as of the last CONTROL word
    let reportedCredits = Atomic<Int>(0)     // `receivesUsed` as of the last CONTROL word
    let reportedDataCredits = Atomic<Int>(0) // `dataReceivesUsed` as of the last CONTROL word
    let finRequested = Atomic<Bool>(false)
    let finSent = Atomic<Bool>(false)
}

/// The counters only the progress shard writes (under the progress lock).
struct ProgressCounters: ~Copyable {
    let sendFreed = Atomic<Int>(0)            // bytes whose writes completed
    let txReturned = Atomic<Int>(0)           // local completions
    let peerReceivesReturned = Atomic<Int>(0) // credits in the peer's CONTROL words
    let remoteFreed = Atomic<Int>(0)          // freed bytes in the peer's CONTROL words
    let received = Atomic<Int>(0)             // bytes DATA words placed
    let receivesUsed = Atomic<Int>(0)         // our receives the peer's words used
    let dataReceivesUsed = Atomic<Int>(0)     // of those, by DATA words
    let finReceived = Atomic<Bool>(false)
}

/// The counter only the receive shard writes (under the receive lock).
struct ReceiveCounters: ~Copyable {
    let consumed = Atomic<Int>(0)             // bytes handed to the caller
}

/// Flags any shard may raise; rarely written but for `sendWorkDue`.
struct EngineSignals: ~Copyable {
    /// The send shard may have work (a CONTROL word, a heartbeat, a staged write): see `StreamEngine`.
    let sendWorkDue = Atomic<Bool>(false)
    /// A heartbeat is due: raised by progress, lowered by the send shard once one went.
    let beatDue = Atomic<Bool>(false)
    let failed = Atomic<Bool>(false)
    let peerDisconnected = Atomic<Bool>(false)
}

/// The sizes the counters are bounded by, fixed at connection.
struct FlowLimits {
    var txQueueSize: Int
    var peerRxCredits: Int
    var peerRingSize: Int
    var localRxCredits: Int
    var sendCapacity: Int
    var receiveCapacity: Int
}

/// The credit and ring-space counters of one stream: monotonic atomics, each with one writer (its
/// shard), on cache lines by writer. What is available is always a difference of two of them.
///
/// Invariants (the module's protocol-v4 state; `checkInvariants` checks them in debug builds):
/// 1. 0 <= txTaken − txReturned <= txQueueSize
/// 2. 0 <= peerReceivesTaken − peerReceivesReturned <= peer's rx credits
/// 3. 0 <= remoteWritten − remoteFreed <= peer's ring size
/// 4. 0 <= received − consumed <= receive ring size
/// 5. 0 <= committed − sendFreed <= send ring size
/// 6. 0 <= receivesUsed − reportedCredits <= local rx credits, and dataReceivesUsed <= receivesUsed
/// 7. finSent implies finRequested
///
/// Each pair is read in the order that makes its check sound while other threads move the
/// counters: for `low <= a − b` the subtrahend first, for `a − b <= high` the minuend first (each
/// only grows). Invariant 6 is read the same way; a CONTROL word whose post is undone lowers
/// `reportedCredits` back to what the peer was really given, so the bound still holds (the
/// progress shard refuses a receive beyond the credits before counting it).
struct FlowCounters {
    let send: UnsafeMutablePointer<SendCounters>
    let progress: UnsafeMutablePointer<ProgressCounters>
    let receive: UnsafeMutablePointer<ReceiveCounters>
    let signals: UnsafeMutablePointer<EngineSignals>
    let limits: FlowLimits

    /// Bytes one group of counters occupies: two cache lines, since adjacent-line prefetching pairs them.
    static let groupStride = 128

    /// Offsets of the four groups from a 128-byte-aligned base, and the bytes they take.
    static var layout: (send: Int, progress: Int, receive: Int, signals: Int, size: Int) {
        func span<T: ~Copyable>(_: T.Type) -> Int { (MemoryLayout<T>.size + groupStride - 1) / groupStride * groupStride }
        let send = 0
        let progress = send + span(SendCounters.self)
        let receive = progress + span(ProgressCounters.self)
        let signals = receive + span(ReceiveCounters.self)
        return (send, progress, receive, signals, signals + span(EngineSignals.self))
    }

    /// Initialises the four groups at `base` (128-byte aligned, `layout.size` bytes).
    init(initializingAt base: UnsafeMutableRawPointer, limits: FlowLimits) {
        precondition(Int(bitPattern: base) % Self.groupStride == 0, "counters must start on a line pair")
        let l = Self.layout
        send = (base + l.send).bindMemory(to: SendCounters.self, capacity: 1)
        progress = (base + l.progress).bindMemory(to: ProgressCounters.self, capacity: 1)
        receive = (base + l.receive).bindMemory(to: ReceiveCounters.self, capacity: 1)
        signals = (base + l.signals).bindMemory(to: EngineSignals.self, capacity: 1)
        send.initialize(to: SendCounters())
        progress.initialize(to: ProgressCounters())
        receive.initialize(to: ReceiveCounters())
        signals.initialize(to: EngineSignals())
        self.limits = limits
    }

    func deinitialize() {
        send.deinitialize(count: 1)
        progress.deinitialize(count: 1)
        receive.deinitialize(count: 1)
        signals.deinitialize(count: 1)
    }

    // MARK: What is available

    /// Free transmit slots (a sender's view: its own count relaxed, the returns acquired).
    var txAvailable: Int {
        limits.txQueueSize - (send.pointee.txTaken.load(ordering: .relaxed) - progress.pointee.txReturned.load(ordering: .acquiring))
    }

    var peerReceivesAvailable: Int {
        limits.peerRxCredits - (send.pointee.peerReceivesTaken.load(ordering: .relaxed)
            - progress.pointee.peerReceivesReturned.load(ordering: .acquiring))
    }

    var sendRingUsed: Int { send.pointee.committed.load(ordering: .relaxed) - progress.pointee.sendFreed.load(ordering: .acquiring) }

    var remoteSpace: Int {
        limits.peerRingSize - (send.pointee.remoteWritten.load(ordering: .relaxed) - progress.pointee.remoteFreed.load(ordering: .acquiring))
    }

    /// Received bytes not yet consumed.
    var readable: Int { progress.pointee.received.load(ordering: .acquiring) - receive.pointee.consumed.load(ordering: .acquiring) }

    /// Free bytes of the receive ring as the progress shard sees them.
    var receiveFree: Int {
        limits.receiveCapacity - (progress.pointee.received.load(ordering: .relaxed) - receive.pointee.consumed.load(ordering: .acquiring))
    }

    /// Peer receives in use and peer-ring bytes in use, as the progress shard checks a CONTROL word.
    var inUseForControl: (receives: Int, bytes: Int) {
        (send.pointee.peerReceivesTaken.load(ordering: .acquiring) - progress.pointee.peerReceivesReturned.load(ordering: .relaxed),
         send.pointee.remoteWritten.load(ordering: .acquiring) - progress.pointee.remoteFreed.load(ordering: .relaxed))
    }

    /// Grows whenever a transmit slot or a peer receive comes back (both counters only grow).
    var returnsSeen: Int {
        progress.pointee.txReturned.load(ordering: .acquiring) &+ progress.pointee.peerReceivesReturned.load(ordering: .acquiring)
    }

    /// What the next CONTROL word would carry: bytes freed and receives used since the last one.
    var unreported: UnreportedReturns {
        let usedNow = progress.pointee.receivesUsed.load(ordering: .acquiring)
        let dataNow = progress.pointee.dataReceivesUsed.load(ordering: .acquiring)
        // A peer that never returns credits could let freed bytes outgrow the word's field.
        let freed = min(receive.pointee.consumed.load(ordering: .acquiring) - send.pointee.reportedFreed.load(ordering: .acquiring),
                        NotificationWord.maxFreed)
        return UnreportedReturns(freed: freed, credits: usedNow - send.pointee.reportedCredits.load(ordering: .acquiring),
                                 dataCredits: dataNow - send.pointee.reportedDataCredits.load(ordering: .acquiring),
                                 receivesUsedNow: usedNow, dataReceivesUsedNow: dataNow)
    }

    // MARK: Invariants

    /// The header's invariants, as a sentence for each one broken (empty: all hold). Sound while
    /// other threads run (see the header); the offsets that the shards keep are checked by the
    /// engine's `brokenInvariants`.
    func brokenInvariants() -> [String] {
        var broken: [String] = []
        func pair(_ what: String, high: Int, _ minuend: borrowing Atomic<Int>, _ subtrahend: borrowing Atomic<Int>) {
            let lowB = subtrahend.load(ordering: .acquiring)
            let lowA = minuend.load(ordering: .acquiring)
            if lowA - lowB < 0 { broken.append("\(what) \(lowA - lowB) below 0") }
            let highA = minuend.load(ordering: .acquiring)
            let highB = subtrahend.load(ordering: .acquiring)
            if highA - highB > high { broken.append("\(what) \(highA - highB) above \(high)") }
        }
        let s = send, p = progress, r = receive
        pair("tx slots in use", high: limits.txQueueSize, s.pointee.txTaken, p.pointee.txReturned)
        pair("peer receives in use", high: limits.peerRxCredits, s.pointee.peerReceivesTaken, p.pointee.peerReceivesReturned)
        pair("peer ring bytes in use", high: limits.peerRingSize, s.pointee.remoteWritten, p.pointee.remoteFreed)
        pair("receive ring bytes held", high: limits.receiveCapacity, p.pointee.received, r.pointee.consumed)
        pair("send ring bytes held", high: limits.sendCapacity, s.pointee.committed, p.pointee.sendFreed)
        // The minuend first (an undone CONTROL word only lowers `reportedCredits` back to what
        // the peer was really given).
        let used = p.pointee.receivesUsed.load(ordering: .acquiring)
        let reported = s.pointee.reportedCredits.load(ordering: .acquiring)
        if used - reported > limits.localRxCredits { broken.append("unreported receives \(used - reported) above \(limits.localRxCredits)") }
        let data = p.pointee.dataReceivesUsed.load(ordering: .acquiring)
        if data > p.pointee.receivesUsed.load(ordering: .acquiring) { broken.append("receives used by data \(data) above all used") }
        if s.pointee.finSent.load(ordering: .acquiring) && !s.pointee.finRequested.load(ordering: .acquiring) {
            broken.append("FIN sent but never asked for")
        }
        return broken
    }

    /// Traps in debug builds when an invariant of the header is broken; compiled out of release builds.
    @inline(__always)
    func checkInvariants() {
        #if DEBUG
        let broken = brokenInvariants()
        assert(broken.isEmpty, "flow counters: \(broken.joined(separator: "; "))")
        #endif
    }
}

/// What a CONTROL word would return now, and the counts it would mark as reported.
struct UnreportedReturns {
    var freed: Int
    var credits: Int
    var dataCredits: Int
    var receivesUsedNow: Int
    var dataReceivesUsedNow: Int
}
