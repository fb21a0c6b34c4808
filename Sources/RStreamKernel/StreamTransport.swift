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
    package init(txPerDataWrite: Int, peerReceivesPerDataWrite: Int, txQueueSize: Int, postedReceives: Int) {
        self.txPerDataWrite = txPerDataWrite
        self.peerReceivesPerDataWrite = peerReceivesPerDataWrite
        self.txQueueSize = txQueueSize
        self.postedReceives = postedReceives
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

/// The small interface under the rings: the transport owns the registered send and receive rings
/// (registered when it is made), writes ring bytes with a word, sends a word, and reports
/// completions. libfabric is one implementation; a same-host shared-memory one can sit beside it.
///
/// The engine's shards call it from different threads: `write`, `sendDataWord` and `send(word:)`
/// only under the send lock, `poll` only under the progress lock (it never posts); `disconnect`
/// from anywhere.
package protocol StreamTransport: AnyObject {
    var costs: TransportCosts { get }
    /// The NUMA node for the engine's hot state (the rings' node), nil for the default policy.
    var hotStateNode: Int? { get }
    /// The local send ring, registered for local access only.
    var sendRing: UnsafeMutableRawBufferPointer { get }
    /// The local receive ring, registered for remote write by the peer.
    var receiveRing: UnsafeRawBufferPointer { get }
    /// Writes `length` bytes at `sendOffset` of the send ring to the peer's ring at `remoteOffset`,
    /// notifying the peer with `word`.
    func write(sendOffset: Int, length: Int, remoteOffset: Int, word: UInt32, writeSlot: Int) throws(RStreamError) -> WritePost
    /// Posts the DATA word of a write that returned `.bytesOnly`. False when the queue is full.
    func sendDataWord(_ word: UInt32) throws(RStreamError) -> Bool
    /// Sends `word` alone. False when the core's queue is full.
    func send(word: UInt32) throws(RStreamError) -> Bool
    /// Reads up to `events.count` completions; returns how many it stored.
    func poll(into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int
    /// Ends the core connection (no more words in either direction).
    func disconnect()
}
