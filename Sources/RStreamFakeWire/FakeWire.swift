@_spi(Benchmarks) import RStreamKernel

// The in-memory wire under the engine, for its tests and its fuzzer (a target of its own so both
// can use it; never a product). Swift 6.3.1 crashes (LLVM "Invalid bitcast") compiling it with
// -sanitize=thread; its single-threaded users gain nothing from ThreadSanitizer, so that build
// leaves it out.
#if !RSTREAM_TSAN
/// What a test can make one operation of the fake wire do instead of succeeding.
package enum FakeFault {
    /// The core's queue is full: nothing is posted.
    case queueFull
    /// The operation fails with this error.
    case error(RStreamError)
    /// The operation succeeds (to aim a later fault past it).
    case pass
}

/// The operations of the fake wire a fault can be aimed at.
package enum FakeOperation: Equatable {
    /// A data write's bytes (with its word, outside iWarp mode).
    case write
    /// The DATA word after a write's bytes (iWarp mode's second post).
    case dataWord
    /// A CONTROL word.
    case controlWord
    case poll
}

/// Two in-memory endpoints joined by queues: writes land in the peer's receive ring at the remote
/// offset (bounds-checked, so an out-of-range write is caught), words arrive as notifications.
/// `faults` makes chosen operations report a full queue or throw, each once, in order.
package final class FakeWire {
    package var pending: [[TransportEvent]] = [[], []]
    package var rings: [UnsafeMutableRawBufferPointer] = []
    /// Completions held back until `deliver()`; lets a test see state before they return.
    package var holdCompletions = false
    package var held: [[TransportEvent]] = [[], []]
    package var consumesOnData: Bool
    package var iwarp: Bool
    package var faults: [(side: Int, operation: FakeOperation, fault: FakeFault)] = []
    /// Every word each side posted, in order (what the peer was sent).
    package var posted: [[UInt32]] = [[], []]

    /// The streaming shape both sides' costs report (`TransportCosts`).
    package let largestStreamingWrite: Int
    package let controlWordsPerRing: Int
    package let bulkCopyBypassesCache: Bool

    package init(consumesOnData: Bool = false, iwarp: Bool = false, largestStreamingWrite: Int = .max, controlWordsPerRing: Int = 2,
                 bulkCopyBypassesCache: Bool = false) {
        self.consumesOnData = consumesOnData
        self.iwarp = iwarp
        self.largestStreamingWrite = largestStreamingWrite
        self.controlWordsPerRing = controlWordsPerRing
        self.bulkCopyBypassesCache = bulkCopyBypassesCache
    }

    package func inject(to side: Int, _ event: TransportEvent) { pending[side].append(event) }

    package func deliver() {
        for side in 0..<2 { pending[side] += held[side]; held[side] = [] }
    }

    /// Makes the next `operation` of `side` fail with `fault` (after the faults already armed for it).
    package func fail(_ side: Int, _ operation: FakeOperation, with fault: FakeFault, times: Int = 1) {
        for _ in 0..<times { faults.append((side, operation, fault)) }
    }

    /// The fault armed for this operation, consumed.
    package func fault(_ side: Int, _ operation: FakeOperation) -> FakeFault? {
        guard let i = faults.firstIndex(where: { $0.side == side && $0.operation == operation }) else { return nil }
        return faults.remove(at: i).fault
    }
}

package final class FakeTransport: StreamTransport, @unchecked Sendable {
    package let side: Int
    package let wire: FakeWire
    package let sendRegion: PageAlignedRegion
    package let receiveRegion: PageAlignedRegion
    package let costs: TransportCosts
    package var disconnected = false
    package var ringNode: Int? { nil }
    package var name: String { "fake" }
    package var sendRingIsPeerRing: Bool { false }
    /// The completion queue is the only place to look (a poll is the look).
    package var mayHaveNews: Bool { true }
    package var ringPageNodes: (send: [Int], receive: [Int]) { ([], []) }
    package var waitSet: WaitSet? { nil }
    package func tryWait(for interest: WaitInterest) -> Bool { false }
    package func takePeerLeft() -> Bool { false }
    package var hasConnectionEvent: Bool { false }
    package func address(ofPeer: Bool) -> [UInt8]? { nil }
    package var connectionEventDescriptor: ConnectionEventDescriptor? { nil }

    package init(side: Int, wire: FakeWire, ringSize: Int, txQueueSize: Int = 16, rxCredits: Int = 8) {
        self.side = side
        self.wire = wire
        sendRegion = try! PageAlignedRegion(byteCount: ringSize)
        receiveRegion = try! PageAlignedRegion(byteCount: ringSize)
        costs = TransportCosts(txPerDataWrite: wire.iwarp ? 2 : 1,
                               peerReceivesPerDataWrite: wire.iwarp || wire.consumesOnData ? 1 : 0,
                               txQueueSize: txQueueSize, postedReceives: rxCredits,
                               largestStreamingWrite: wire.largestStreamingWrite, bulkCopyBypassesCache: wire.bulkCopyBypassesCache,
                               controlWordsPerRing: wire.controlWordsPerRing)
        wire.rings.append(receiveRegion.buffer)
    }

    package var block: ConnectionBlock {
        ConnectionBlock(baseAddress: 0, key: UInt64(side), ringSize: receiveRegion.count,
                        rxCredits: costs.postedReceives, iwarp: wire.iwarp)
    }

    package var sendRing: UnsafeMutableRawBufferPointer { sendRegion.buffer }
    package var receiveRing: UnsafeRawBufferPointer { UnsafeRawBufferPointer(receiveRegion.buffer) }

    private func complete(_ event: TransportEvent) {
        if wire.holdCompletions { wire.held[side].append(event) } else { wire.pending[side].append(event) }
    }

    /// False when the armed fault is a full queue; throws an armed error.
    private func admit(_ operation: FakeOperation) throws(RStreamError) -> Bool {
        switch wire.fault(side, operation) {
        case nil, .pass?: return true
        case .queueFull?: return false
        case .error(let error)?: throw error
        }
    }

    private func notifyPeer(_ word: UInt32, consumedReceive: Bool) {
        wire.posted[side].append(word)
        wire.pending[1 - side].append(.notified(word: word, consumedReceive: consumedReceive))
    }

    package func write(sendOffset: Int, length: Int, remoteOffset: Int, word: UInt32, writeSlot: Int) throws(RStreamError) -> WritePost {
        guard try admit(.write) else { return .notPosted }
        let target = wire.rings[1 - side]
        precondition(sendOffset + length <= sendRegion.count, "write reads beyond the send ring")
        precondition(remoteOffset + length <= target.count, "write lands beyond the peer's ring")
        target.baseAddress!.advanced(by: remoteOffset).copyMemory(from: sendRegion.base + sendOffset, byteCount: length)
        complete(.transmitted(writeSlot: writeSlot))
        guard wire.iwarp else {
            notifyPeer(word, consumedReceive: wire.consumesOnData)
            return .complete
        }
        return try sendDataWord(word) ? .complete : .bytesOnly
    }

    package func sendDataWord(_ word: UInt32) throws(RStreamError) -> Bool {
        precondition(wire.iwarp, "a DATA word apart from its write outside iWarp mode")
        guard try admit(.dataWord) else { return false }
        complete(.transmitted(writeSlot: nil))
        notifyPeer(word, consumedReceive: true)
        return true
    }

    package func send(word: UInt32) throws(RStreamError) -> Bool {
        guard try admit(.controlWord) else { return false }
        complete(.transmitted(writeSlot: nil))
        notifyPeer(word, consumedReceive: true)
        return true
    }

    package func poll(into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int {
        guard try admit(.poll) else { return 0 }
        let n = min(events.count, wire.pending[side].count)
        for i in 0..<n { events[i] = wire.pending[side][i] }
        wire.pending[side].removeFirst(n)
        return n
    }

    package func disconnect() { disconnected = true }
}

package typealias FakeEngine = StreamEngine

/// A connected pair of engines over one wire.
package final class EnginePair {
    package let a: FakeEngine
    package let b: FakeEngine
    package let wire: FakeWire

    package init(ringSize: Int = 4096, txQueueSize: Int = 16, rxCredits: Int = 8, wire: FakeWire = FakeWire(),
         peerTimeout: Duration? = nil) {
        let ta = FakeTransport(side: 0, wire: wire, ringSize: ringSize, txQueueSize: txQueueSize, rxCredits: rxCredits)
        let tb = FakeTransport(side: 1, wire: wire, ringSize: ringSize, txQueueSize: txQueueSize, rxCredits: rxCredits)
        let blockA = ta.block, blockB = tb.block
        a = try! FakeEngine(transport: ta, peer: blockB, peerTimeout: peerTimeout)
        b = try! FakeEngine(transport: tb, peer: blockA, peerTimeout: peerTimeout)
        self.wire = wire
    }
}

extension StreamEngine {
    /// The fake transport under an engine of an `EnginePair`.
    package var fake: FakeTransport { transport as! FakeTransport }

    package func send(_ bytes: [UInt8]) throws(RStreamError) -> Int {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        defer { copy.deallocate() }
        copy.copyBytes(from: bytes)
        return try send(UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count]))
    }

    package func receive(into buffer: inout [UInt8]) throws(RStreamError) -> ReceiveOutcome {
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count, alignment: 1)
        defer { raw.deallocate() }
        let outcome = try receive(into: raw)
        if case .bytes(let n) = outcome { buffer.replaceSubrange(0..<n, with: raw[0..<n]) }
        return outcome
    }

    package func receiveAll(max: Int = 1 << 20) throws(RStreamError) -> ([UInt8], ReceiveOutcome) {
        var buffer = [UInt8](repeating: 0, count: max)
        let outcome = try receive(into: &buffer)
        if case .bytes(let n) = outcome { return (Array(buffer[0..<n]), outcome) }
        return ([], outcome)
    }
}

#endif
