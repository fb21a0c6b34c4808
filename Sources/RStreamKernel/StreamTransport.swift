/// What happened on the transport, as the progress engine needs to know it.
package enum TransportEvent: Sendable, Equatable {
    /// A local send or write finished; `writeSlot` names a data write's FIFO slot.
    case transmitted(writeSlot: Int?)
    /// A notification arrived: its word (nil when it brought none, a protocol error) and whether it
    /// used up a posted receive (which the transport has already posted again).
    case notified(word: UInt32?, consumedReceive: Bool)
    /// An operation failed; `transmit` tells a local send/write from a receive.
    case failed(code: Int32, transmit: Bool)
}

/// What one operation costs in the transport's terms, read from the core's attributes.
package struct TransportCosts: Sendable, Equatable {
    /// Transmit-queue slots a data write takes (1; 2 in iWarp mode: the write and its DATA send).
    package var txPerDataWrite: Int
    /// Peer receives a data write uses up (1 where the core consumes one for remote CQ data, or in
    /// iWarp mode; else 0).
    package var peerReceivesPerDataWrite: Int
    /// Slots of the transmit queue.
    package var txQueueSize: Int
    /// Receives this side keeps posted: the rx credits its connection block announces.
    package var postedReceives: Int
    /// The most bytes one data write of a streaming send carries. A transport whose writes the
    /// sender's own thread performs (a copy) caps them, so that the peer copies one part out while
    /// the next is copied in; one whose writes a core carries on (a NIC, a kernel) takes any span.
    package var largestStreamingWrite: Int
    /// The send ring is memory another CPU reads next (the peer's receive ring, mapped here): a
    /// bulk send's copy into it is better made with stores that bypass this CPU's caches.
    package var bulkCopyBypassesCache: Bool
    /// CONTROL words that return one receive ring's worth of freed space: 2, one each half ring
    /// (protocol v4's latest), or more where a CONTROL word is cheap, to keep a sender streaming.
    package var controlWordsPerRing: Int
    package init(txPerDataWrite: Int, peerReceivesPerDataWrite: Int, txQueueSize: Int, postedReceives: Int,
                 largestStreamingWrite: Int = .max, bulkCopyBypassesCache: Bool = false, controlWordsPerRing: Int = 2) {
        precondition(largestStreamingWrite > 0 && controlWordsPerRing >= 2)
        self.txPerDataWrite = txPerDataWrite
        self.peerReceivesPerDataWrite = peerReceivesPerDataWrite
        self.txQueueSize = txQueueSize
        self.postedReceives = postedReceives
        self.bulkCopyBypassesCache = bulkCopyBypassesCache
        self.controlWordsPerRing = controlWordsPerRing
        self.largestStreamingWrite = largestStreamingWrite
    }
}

/// How far the post of one data write got.
package enum WritePost: Sendable, Equatable {
    /// Nothing was posted: the core's queue was full.
    case notPosted
    /// The bytes were posted but their DATA word found the queue full (iWarp posts them in two
    /// steps); `sendDataWord` must post the word before any other data write.
    case bytesOnly
    /// The bytes and their word were posted.
    case complete
}

/// The small interface under the rings: the transport owns the rings (made when it is), moves ring
/// bytes with a word, sends a word, reports completions, and owns what waiting and the connection
/// need (the wait set, the peer's leaving). libfabric is one implementation, same-host shared
/// memory another; the engine and the public layer do not know which they run on.
///
/// The engine's shards call it from different threads: `write`, `sendDataWord` and `send(word:)`
/// only under the send lock; `poll` and `tryWait` only under the progress lock (`poll` never
/// posts a word); the rest from anywhere.
package protocol StreamTransport: AnyObject, Sendable {
    /// What carries the stream: the core provider's name, or "shm".
    var name: String { get }
    var costs: TransportCosts { get }
    /// The NUMA node of the rings (and so of the engine's hot state), nil for the default policy.
    var ringNode: Int? { get }
    /// Where the engine places bytes to send. Normally the local send ring, registered for local
    /// access only. Where `sendRingIsPeerRing` (a direct-write region: the peer's receive ring,
    /// mapped here), it is the peer's ring itself, `peer.ringSize` bytes long, and a write's
    /// `sendOffset` always equals its `remoteOffset`: one copy, from the caller into the peer.
    var sendRing: UnsafeMutableRawBufferPointer { get }
    var sendRingIsPeerRing: Bool { get }
    /// The local receive ring, written by the peer.
    var receiveRing: UnsafeRawBufferPointer { get }
    /// The node of each page of the send and receive rings (`move_pages`).
    var ringPageNodes: (send: [Int], receive: [Int]) { get }
    /// Writes `length` bytes at `sendOffset` of the send ring to the peer's ring at `remoteOffset`,
    /// notifying the peer with `word`.
    func write(sendOffset: Int, length: Int, remoteOffset: Int, word: UInt32, writeSlot: Int) throws(RStreamError) -> WritePost
    /// Posts the DATA word of a write that returned `.bytesOnly`. False when the queue is full.
    func sendDataWord(_ word: UInt32) throws(RStreamError) -> Bool
    /// Sends `word` alone. False when the queue is full.
    func send(word: UInt32) throws(RStreamError) -> Bool
    /// Reads up to `events.count` completions; returns how many it stored. Whoever it finds armed
    /// on `waitSet` it rings.
    func poll(into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int
    /// A lock-free hint from any thread: false only when `poll` would surely find nothing now (a
    /// busy waiter then need not take the progress lock). A transport that cannot tell cheaply
    /// answers true.
    var mayHaveNews: Bool { get }

    // MARK: Waiting and the connection

    /// What this stream's waiters sleep on; nil where the transport offers no descriptor.
    var waitSet: WaitSet? { get }
    /// The last look before sleeping, after `waitSet.arm()` under the progress lock: true when
    /// nothing can arrive unseen while the caller sleeps (`fi_trywait`; the peer sees the armed
    /// flag), false when it must look again. `interest` (empty: anything) lets a transport that
    /// can skip wake-ups that cannot make the stream ready for it (a same-host peer then rings
    /// for no heartbeat, and for DATA only a reader's request); others ignore it.
    func tryWait(for interest: WaitInterest) -> Bool
    /// Takes this stream's pending connection event, if any: true when the peer's side of the
    /// connection went away (a disconnect, a failure, a peer process gone).
    func takePeerLeft() -> Bool
    /// True when a connection event is waiting for `takePeerLeft`.
    var hasConnectionEvent: Bool { get }
    /// A descriptor that tells when a connection event may be waiting (for an event loop that
    /// sleeps on connection events apart from the data), nil where there is none.
    var connectionEventDescriptor: ConnectionEventDescriptor? { get }
    /// This side's address (`ofPeer` false) or the peer's, as a `sockaddr`; nil where unknown.
    func address(ofPeer: Bool) -> [UInt8]?
    /// Ends the connection (no more words in either direction).
    func disconnect()
}

/// A descriptor whose readiness tells of connection events, and which readiness does.
package struct ConnectionEventDescriptor: Sendable, Equatable {
    package let fd: Int32
    /// Only its hang-up is an event: it carries other traffic (a same-host set-up socket carries
    /// the peer's rings), so its readability says nothing.
    package let hangUpOnly: Bool

    package init(fd: Int32, hangUpOnly: Bool) {
        self.fd = fd
        self.hangUpOnly = hangUpOnly
    }
}
