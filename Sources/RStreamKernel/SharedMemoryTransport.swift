import CSameHost
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where things lie in the segments of the same-host transport (protocol v4, "Same host").
///
/// Each side makes two segments before the connection, and passes them with its connection
/// block:
/// - its *inbound* segment, which the peer maps read-write: the word ring the peer fills
///   (`WordRing`, at most 512 slots of 8 bytes: the first page), then the receive ring. It holds
///   nothing but ring bytes and words.
/// - its *status* segment, which the peer can only map read-only (sealed against future writes):
///   the wake request, a counter this side raises each time it arms its descriptor to sleep.
///
/// The peer rings this side's doorbell, once per wake request, with a one-byte message on the
/// connected set-up socket (a non-blocking send), which is in this side's wait set and whose
/// hang-up tells of the peer's leaving. Each end is an open file of its own, so the peer cannot
/// change the flags of ours (as it could an eventfd's it had been given).
package enum SameHostLayout {
    package static let wordRingBytes = 4096
    package static func inboundBytes(ringSize: Int) -> Int { wordRingBytes + ringSize }
    package static let statusBytes = 64
    /// The segments, inbound then status, in the order they are passed.
    package static let descriptorCount = 2
}

/// This side's half of a same-host connection, made before the connection block goes out: the
/// segments and the wait set, which holds the set-up socket the peer rings.
package struct SameHostOffer: ~Copyable {
    package let inbound: SharedSegment
    package let status: SharedSegment
    /// Sleeps on the set-up socket (the peer's rings, and its hang-up) and its own eventfd.
    package let waitSet: WaitSet
    package let shape: EndpointShape

    package init(shape: EndpointShape, socket: Int32) throws(RStreamError) {
        var shape = shape
        if let node = shape.numaNode { try NUMAPlacement.check(node: node) } else if NUMAPlacement.isAvailable {
            shape.numaNode = NUMAPlacement.currentNode
        }
        let inbound = try SharedSegment(making: "rstream-inbound", byteCount: SameHostLayout.inboundBytes(ringSize: shape.receiveRingSize),
                                        node: shape.numaNode, peerMayWrite: true, prefault: shape.prefaultRings)
        WordRing.initialize(at: inbound.base, capacity: WordRing.capacity(forCredits: shape.rxCredits))
        let status = try SharedSegment(making: "rstream-status", byteCount: SameHostLayout.statusBytes, node: shape.numaNode, peerMayWrite: false)
        let words = status.base.bindMemory(to: Atomic<UInt64>.self, capacity: 2)
        words.initialize(to: Atomic(0))
        (words + 1).initialize(to: Atomic(SameHostWakeRequest.formatMarker))
        let waitSet = WaitSet(ownMembers: [], doorbell: socket)
        self.inbound = inbound
        self.status = status
        self.waitSet = waitSet
        self.shape = shape
    }

    /// The block this side announces: offsets into its inbound ring (base 0, no key).
    package var block: ConnectionBlock {
        ConnectionBlock(baseAddress: 0, key: 0, ringSize: shape.receiveRingSize, rxCredits: shape.rxCredits, iwarp: false)
    }

    package var descriptors: [Int32] { [inbound.descriptor, status.descriptor] }
}

/// The shared-memory transport of one connection between two processes of this host: bytes go
/// from the caller straight into the peer's receive ring (mapped here, the engine's direct-write
/// region), each word into the peer's word ring, and the peer is rung over the set-up socket only
/// when it has asked (its status segment shows a new wake request): a busy peer costs no system
/// call.
///
/// Invariants: the four segments stay mapped, and the socket open, until deinit.
/// `sendSide` is touched only under the engine's send lock, `progressSide` only under its
/// progress lock; they lie on separate cache lines, as do the completion FIFO's two counters.
/// Nothing this side relies on lives in memory the peer can write: the peer's segments hold only
/// ring bytes and words, and every word is checked (`WordRingConsumer`, then the engine).
package final class SharedMemoryTransport: StreamTransport, @unchecked Sendable {
    private let inbound: SharedSegment
    private let status: SharedSegment
    private let peerInbound: SharedSegment
    private let peerStatus: SharedSegment
    /// The connected set-up socket: the peer rings us on it, we ring the peer, and its hang-up
    /// is the peer's leaving.
    private let socket: Int32
    private let ownWaitSet: WaitSet
    package let shape: EndpointShape
    package let costs: TransportCosts
    private let peerRingSize: Int

    /// The send lock's state: the producer end of the peer's word ring, and the last wake request
    /// of the peer that this side answered.
    private struct SendSide {
        var producer: WordRingProducer
        var answeredWakeRequest: UInt64 = 0
    }
    /// The progress lock's state: the consumer end of our word ring, the transmit completions
    /// taken, and an error found after some words of a batch (reported by the next poll, so the
    /// words before it are handled first).
    private struct ProgressSide {
        var consumer: WordRingConsumer
        var completionsTaken = 0
        var pendingError: RStreamError?
        var leftReported = false
    }

    /// Private state on its own lines: send side, progress side, the completion FIFO's posted
    /// count, then the FIFO's slots (the write slot, or -1 for a word alone).
    private let localRegion: PageAlignedRegion
    private let sendSide: UnsafeMutablePointer<SendSide>
    private let progressSide: UnsafeMutablePointer<ProgressSide>
    private let completionsPosted: UnsafeMutablePointer<Atomic<Int>>
    /// What the progress side has taken, published for `mayHaveNews` (written under the
    /// progress lock only, on the progress side's lines).
    private let published: UnsafeMutablePointer<PublishedProgress>
    private struct PublishedProgress: ~Copyable {
        let wordsTaken = Atomic<UInt64>(0)
        let completionsTaken = Atomic<Int>(0)
        let somethingHeldBack = Atomic<Bool>(false)
    }
    private let ownWordRing: UnsafeMutableRawPointer
    private let ownWordRingCapacity: Int
    private let completionSlots: UnsafeMutablePointer<Int32>
    private let peerWakeRequest: UnsafeMutablePointer<Atomic<UInt64>>
    /// The peer's requests carry what its waiters want (its status segment says so); an older
    /// peer's are plain counts, to be rung at any word.
    private let peerRequestsCarryInterest: Bool
    private let ownWakeRequest: UnsafeMutablePointer<Atomic<UInt64>>

    private let peerGone = Atomic<Bool>(false)
    private let leftReportedAsEvent = Atomic<Bool>(false)
    private let lastPeerCheck = Atomic<Int64>(0)

    /// Joins this side's `offer` with the peer's checked `peer` block and its passed descriptors
    /// (inbound segment, status segment: taken over here, closed on failure) over the connected
    /// set-up `socket` (taken over too once this succeeds).
    package init(offer: consuming SameHostOffer, peer: ConnectionBlock, peerDescriptors: [Int32], socket: Int32) throws(RStreamError) {
        precondition(peerDescriptors.count == SameHostLayout.descriptorCount)
        // Each descriptor is owned by what it becomes; on a failure the ones not yet reached are
        // closed, and what was already made is freed as it goes out of scope.
        func closing<T: ~Copyable>(from first: Int, _ body: () throws(RStreamError) -> T) throws(RStreamError) -> T {
            do throws(RStreamError) { return try body() } catch {
                for fd in peerDescriptors[first...] { close(fd) }
                throw error
            }
        }
        let peerInbound = try closing(from: 1) { () throws(RStreamError) in
            try SharedSegment(mapping: peerDescriptors[0], byteCount: SameHostLayout.inboundBytes(ringSize: peer.ringSize),
                              writable: true, what: "inbound segment")
        }
        let peerStatus = try closing(from: 2) { () throws(RStreamError) in
            try SharedSegment(mapping: peerDescriptors[1], byteCount: SameHostLayout.statusBytes, writable: false, what: "status segment")
        }
        let txSize = offer.shape.txQueueSize
        var size = 0
        func take(_ bytes: Int) -> Int {
            let offset = (size + 127) / 128 * 128
            size = offset + bytes
            return offset
        }
        let sendAt = take(MemoryLayout<SendSide>.size)
        let progressAt = take(MemoryLayout<ProgressSide>.size)
        let postedAt = take(MemoryLayout<Atomic<Int>>.size)
        let publishedAt = take(MemoryLayout<PublishedProgress>.size)
        let slotsAt = take(txSize * MemoryLayout<Int32>.stride)
        let region = try closing(from: 2) { () throws(RStreamError) in try PageAlignedRegion(byteCount: size, node: offer.shape.numaNode) }
        let base = region.base
        sendSide = (base + sendAt).bindMemory(to: SendSide.self, capacity: 1)
        sendSide.initialize(to: SendSide(producer: WordRingProducer(
            base: peerInbound.base, capacity: WordRing.capacity(forCredits: peer.rxCredits))))
        progressSide = (base + progressAt).bindMemory(to: ProgressSide.self, capacity: 1)
        progressSide.initialize(to: ProgressSide(consumer: WordRingConsumer(
            base: offer.inbound.base, capacity: WordRing.capacity(forCredits: offer.shape.rxCredits))))
        completionsPosted = (base + postedAt).bindMemory(to: Atomic<Int>.self, capacity: 1)
        completionsPosted.initialize(to: Atomic(0))
        published = (base + publishedAt).bindMemory(to: PublishedProgress.self, capacity: 1)
        published.initialize(to: PublishedProgress())
        ownWordRing = offer.inbound.base
        ownWordRingCapacity = WordRing.capacity(forCredits: offer.shape.rxCredits)
        completionSlots = (base + slotsAt).bindMemory(to: Int32.self, capacity: txSize)
        completionSlots.initialize(repeating: -1, count: txSize)
        localRegion = region
        peerWakeRequest = peerStatus.base.assumingMemoryBound(to: Atomic<UInt64>.self)
        peerRequestsCarryInterest = (peerWakeRequest + 1).pointee.load(ordering: .acquiring) == SameHostWakeRequest.formatMarker
        ownWakeRequest = offer.status.base.assumingMemoryBound(to: Atomic<UInt64>.self)

        self.peerInbound = peerInbound
        self.peerStatus = peerStatus
        peerRingSize = peer.ringSize
        self.socket = socket
        shape = offer.shape
        // Writes are this thread's copies: parts of 8 KiB let the peer copy one out while the next
        // goes in, a CONTROL word each quarter ring keeps the sender streaming, and a bulk copy
        // skips this CPU's caches (measured: NOTES.md, "Same host").
        costs = TransportCosts(txPerDataWrite: 1, peerReceivesPerDataWrite: 1, txQueueSize: txSize, postedReceives: offer.shape.rxCredits,
                               largestStreamingWrite: 8192, bulkCopyBypassesCache: true, controlWordsPerRing: 4)
        ownWaitSet = offer.waitSet
        inbound = offer.inbound
        status = offer.status
    }

    /// Closes this side's copies of what it passed to the peer (its segments' memfds), once the
    /// peer holds them: the mappings keep the memory, so a stream holds two descriptors (the
    /// set-up socket and its wait set's eventfd; an epoll set of the two once its `descriptor` is
    /// asked for).
    package func releasePassedDescriptors() {
        inbound.closeDescriptor()
        status.closeDescriptor()
    }

    deinit {
        sendSide.deinitialize(count: 1)
        progressSide.deinitialize(count: 1)
        completionsPosted.deinitialize(count: 1)
        published.deinitialize(count: 1)
        ownWaitSet.unwatch(socket)
        close(socket)
    }

    package var name: String { "shm" }
    package var ringNode: Int? { shape.numaNode }
    package var sendRingIsPeerRing: Bool { true }
    package var sendRing: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: peerInbound.base + SameHostLayout.wordRingBytes, count: peerRingSize)
    }
    package var receiveRing: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: inbound.base + SameHostLayout.wordRingBytes, count: shape.receiveRingSize)
    }
    package var ringPageNodes: (send: [Int], receive: [Int]) {
        // The peer's pages are in this process's page tables only once touched: read each first.
        var page = 0
        while page < sendRing.count {
            _ = sendRing.baseAddress!.advanced(by: page).assumingMemoryBound(to: Atomic<UInt8>.self).pointee.load(ordering: .relaxed)
            page += PageAlignedRegion.pageSize
        }
        return (NUMAPlacement.nodes(ofPagesIn: UnsafeRawBufferPointer(sendRing)), NUMAPlacement.nodes(ofPagesIn: receiveRing))
    }

    // MARK: Posting (send lock)

    /// Records a transmit completion for the next poll: the operation is done once its word is in
    /// the peer's ring. The tx credits bound the FIFO, which holds `txQueueSize`.
    @inline(__always)
    private func complete(writeSlot: Int32) {
        let posted = completionsPosted.pointee.load(ordering: .relaxed)
        completionSlots[posted % costs.txQueueSize] = writeSlot
        completionsPosted.pointee.store(posted + 1, ordering: .releasing)
        // A thread asleep waiting for room learns of it (one load unless someone is armed).
        ownWaitSet.stateMayHaveChanged(serving: .writable)
    }

    /// Publishes `word` in the peer's ring, then rings its doorbell if it asked since the last ring
    /// and `word` can make its stream ready for what it waits for (`wakes`, `SameHostWakeRequest`).
    @inline(__always)
    private func post(_ word: UInt32, wakes: WaitInterest) {
        sendSide.pointee.producer.push(word)
        // Pairs with the fence in the peer's `tryWait`: either it sees this word, or this sees its request.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let request = peerWakeRequest.pointee.load(ordering: .relaxed)
        if request != sendSide.pointee.answeredWakeRequest
            && (!peerRequestsCarryInterest || !SameHostWakeRequest.interest(of: request).isDisjoint(with: wakes)) {
            sendSide.pointee.answeredWakeRequest = request
            _ = rs_ring_doorbell(socket) // EAGAIN: rings already pending; EPIPE: gone; never blocks
        }
    }

    package func write(sendOffset: Int, length: Int, remoteOffset: Int, word: UInt32, writeSlot: Int) throws(RStreamError) -> WritePost {
        // The engine placed the bytes in the peer's ring itself (the direct-write region).
        assert(sendOffset == remoteOffset && remoteOffset + length <= peerRingSize, "direct write at \(sendOffset)/\(remoteOffset)")
        complete(writeSlot: Int32(writeSlot))
        post(word, wakes: [.readable, .everyWord])
        return .complete
    }

    package func sendDataWord(_ word: UInt32) throws(RStreamError) -> Bool {
        preconditionFailure("the same-host transport posts a write's word with its bytes")
    }

    package func send(word: UInt32) throws(RStreamError) -> Bool {
        complete(writeSlot: -1)
        post(word, wakes: SameHostWakeRequest.wakes(control: word))
        return true
    }

    // MARK: Completions (progress lock)

    package func poll(into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int {
        if let error = progressSide.pointee.pendingError { throw error }
        var n = 0
        let posted = completionsPosted.pointee.load(ordering: .acquiring)
        // Own completions can only make room; a peer's word or leaving may serve anyone.
        var serves: WaitInterest = progressSide.pointee.completionsTaken < posted ? .writable : []
        while n < events.count && progressSide.pointee.completionsTaken < posted {
            let slot = completionSlots[progressSide.pointee.completionsTaken % costs.txQueueSize]
            events[n] = .transmitted(writeSlot: slot < 0 ? nil : Int(slot))
            progressSide.pointee.completionsTaken += 1
            n += 1
        }
        while n < events.count {
            do throws(RStreamError) {
                guard case .word(let word) = try progressSide.pointee.consumer.next() else { break }
                events[n] = .notified(word: word, consumedReceive: true)
                n += 1
                serves = .anything
            } catch {
                guard n > 0 else { throw error }
                progressSide.pointee.pendingError = error
                published.pointee.somethingHeldBack.store(true, ordering: .releasing)
                serves = .anything
                break
            }
        }
        published.pointee.wordsTaken.store(progressSide.pointee.consumer.taken, ordering: .releasing)
        published.pointee.completionsTaken.store(progressSide.pointee.completionsTaken, ordering: .releasing)
        // The peer's leaving, once its last words are in: a failed receive (a reset unless its
        // FIN came first), as a core reports a broken connection. Progress alone sees it, so a
        // caller that only polls learns of it too.
        if n == 0 && !progressSide.pointee.leftReported && peerHasLeft() {
            // Its last words may have landed between the look above and the socket's end (the
            // end comes after its stores): they go first, the leaving at the next poll.
            if progressSide.pointee.consumer.hasNext() { return try poll(into: events) }
            progressSide.pointee.leftReported = true
            events[0] = .failed(code: ECONNRESET, transmit: false)
            n = 1
            serves = .anything
        }
        if n > 0 { ownWaitSet.stateMayHaveChanged(serving: serves) }
        return n
    }

    /// Completions posted and not taken, a word in our ring, or an error held back.
    package var mayHaveNews: Bool {
        completionsPosted.pointee.load(ordering: .acquiring) != published.pointee.completionsTaken.load(ordering: .acquiring)
            || WordRingConsumer.slotHoldsSomething(base: ownWordRing, capacity: ownWordRingCapacity,
                                          position: published.pointee.wordsTaken.load(ordering: .acquiring))
            || published.pointee.somethingHeldBack.load(ordering: .acquiring)
    }

    // MARK: Waiting and the connection

    package var waitSet: WaitSet? { shape.waitDescriptor ? ownWaitSet : nil }

    /// Raises this side's wake request for `interest` (the peer rings the doorbell at its next
    /// word that can serve it), then looks at the word ring and the completions once more.
    package func tryWait(for interest: WaitInterest) -> Bool {
        // Only this side writes it, under the progress lock: a load and a store. It asks for what
        // every waiter armed since the last ring wants, not only this one (a writer arming after
        // a reader must not take the reader's request back).
        let wanted = interest.isEmpty ? [.readable, .writable] : interest
        let raised = SameHostWakeRequest.raised(ownWakeRequest.pointee.load(ordering: .relaxed),
                                                for: wanted.union(ownWaitSet.armedInterest))
        ownWakeRequest.pointee.store(raised, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if progressSide.pointee.consumer.hasNext() { return false }
        return completionsPosted.pointee.load(ordering: .acquiring) == progressSide.pointee.completionsTaken
    }

    /// Looks at the set-up socket, at most once per tick of the coarse clock (a few milliseconds:
    /// no system call per operation while busy-polling): its hang-up means the peer is gone (its
    /// process died, or it closed or shut the socket down), whatever rings still wait ahead of it.
    /// What the peer sends on it is only ever a ring (drained when a waiter arms).
    private func peerHasLeft() -> Bool {
        if peerGone.load(ordering: .acquiring) { return true }
        let now = Liveness.nowTicks()
        // A load and a store, not an exchange (a locked instruction on every empty poll): two
        // threads that both look in one tick cost one more poll, nothing else.
        guard lastPeerCheck.load(ordering: .relaxed) != now else { return false }
        lastPeerCheck.store(now, ordering: .relaxed)
        guard rs_peer_hung_up(socket) != 0 else { return false }
        if !peerGone.exchange(true, ordering: .acquiringAndReleasing) {
            // It stays readable once hung up: sleepers would spin on it.
            ownWaitSet.unwatch(socket)
            ownWaitSet.ring()
        }
        return true
    }

    /// The peer's leaving as a connection event, reported once, and only once no word of it is
    /// left unread (a caller handles the event after one progress step, which reads one batch).
    package func takePeerLeft() -> Bool {
        peerHasLeft() && !mayHaveNews && !leftReportedAsEvent.exchange(true, ordering: .relaxed)
    }

    package var hasConnectionEvent: Bool { false } // the socket is in the wait set: its hang-up wakes sleepers
    /// The set-up socket: its hang-up is the peer's leaving (the rings on it are not events).
    package var connectionEventDescriptor: ConnectionEventDescriptor? { ConnectionEventDescriptor(fd: socket, hangUpOnly: true) }

    /// The addresses the set-up gave (`SameHostName`), set once before the engine shares it.
    nonisolated(unsafe) package var addresses: (local: [UInt8]?, peer: [UInt8]?) = (nil, nil)

    package func address(ofPeer: Bool) -> [UInt8]? { ofPeer ? addresses.peer : addresses.local }

    package func disconnect() {
        _ = shutdown(socket, Int32(SHUT_RDWR))
    }
}

/// The wake request a same-host side publishes in its status segment (read-only to the peer):
/// a count raised at each arming, shifted left by three, with what its waiters want in the low
/// bits (readable 1, writable 2, every word 4). The peer rings once per new request, at its first
/// word that can serve it: DATA, and a CONTROL word carrying FIN, serve a reader; a CONTROL word
/// returning space or credits serves a writer; any word, a heartbeat alone too, serves a waiter of
/// every word (a descriptor handed to the user, who may sleep on it without a timeout). The
/// library's own sleeps have timeouts, so they ask for no heartbeat: they judge the peer's
/// liveness when they time out or tick.
package enum SameHostWakeRequest {
    /// The status segment's second word says the first carries interests ("RSWAKE" and format 2):
    /// a peer without it publishes a plain count, and is rung at its next word whatever it is.
    package static let formatMarker: UInt64 = 0x5253_5741_4B45_0002

    package static func raised(_ previous: UInt64, for interest: WaitInterest) -> UInt64 {
        ((previous >> 3) &+ 1) << 3 | UInt64(interest.rawValue & 7)
    }

    /// What a request (the peer's, so hostile: any value is safe here) waits for.
    package static func interest(of request: UInt64) -> WaitInterest { WaitInterest(rawValue: UInt8(request & 7)) }

    /// Whom a CONTROL word of this side can serve.
    package static func wakes(control word: UInt32) -> WaitInterest {
        guard case .control(let freed, let credits, let fin, _)? = try? NotificationWord.decode(word) else { return .anything }
        var serves: WaitInterest = .everyWord
        if fin { serves.insert(.readable) }
        if freed > 0 || credits > 0 { serves.insert(.writable) }
        return serves
    }
}
