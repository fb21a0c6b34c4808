import Logging
import RStreamKernel

/// Settings fixed before a connection starts. Every value is checked; a bad one is named in the
/// error with its allowed range.
public struct StreamOptions: Sendable, Equatable {
    /// Bytes of the send ring (default 32 KiB).
    public var sendRingSize = 32 * 1024
    /// Bytes of the receive ring the peer writes into (default 32 KiB).
    public var receiveRingSize = 32 * 1024
    /// Transmit-queue slots (default 384); the core's own limit caps it.
    public var txQueueSize = 384
    /// Receives kept posted for the peer's words (default 384).
    public var rxCredits = 384
    /// iWarp mode: words travel as 4-byte sends instead of remote CQ data.
    public var iwarp = false
    /// What carries the stream. "shm": the same-host transport only (shared memory between two
    /// processes of this host). A core provider's name ("tcp", "verbs"): that core only. nil:
    /// `RSTREAM_PROVIDER`, else, to an address of this host whose listener serves it, shared
    /// memory, and otherwise the best usable core (verbs, tcp, sockets, then any other).
    /// `StreamConnection.transport` tells which one a stream got.
    public var provider: String?
    /// How long blocking calls busy-poll before they sleep. Past its first 5 µs the busy-poll
    /// yields the core between looks (`sched_yield`), so that a thread the call waits for can run
    /// where threads outnumber cores; alone on its core it goes on at once.
    public var busyPollWindow: Duration = .microseconds(50)
    /// Give the stream a descriptor to `poll()` on (`FI_WAIT_FD`), on which blocking calls sleep.
    /// Some cores (tcp) then signal a descriptor on every completion, which costs latency; a
    /// caller that only busy-polls may turn it off (blocking calls then sleep in short steps).
    public var waitDescriptor = true
    /// Share one completion queue, and one event queue, with this process's other streams where
    /// the core lets each completion name its stream (default): where every word uses up a
    /// posted receive, which iWarp mode does on any core and normal mode does on a core that
    /// asks for `FI_RX_CQ_DATA` (verbs). A stream then holds one descriptor beyond the core's own
    /// (its eventfd, made when something first sleeps on it), so that 10,000 streams fit a
    /// 20,000-descriptor limit and one `epoll` holds their descriptors. Over tcp in normal mode a
    /// remote write's data names no stream, and each stream keeps queues of its own whatever this
    /// says. False: queues of its own always (no reading of other streams' completions).
    public var sharedCompletions = true
    /// The NUMA node for the rings; nil: the NIC's node where the core reports it, else the
    /// calling thread's node.
    public var numaNode: Int?
    /// Touch every page of the rings when the stream is made, so that none is faulted in on the
    /// data path (default false: each page comes in when first used, on the rings' node all the
    /// same, and a stream that stays idle holds no ring page; over shared memory the page of the
    /// word ring is touched when the stream is made either way). Set it where the first bytes of
    /// a stream must not pay a page fault per page (a few microseconds in all at the default ring
    /// sizes). A core that pins its registrations (verbs) faults the rings in when they are
    /// registered anyway. A node without free pages shows at the first touch, as the kernel's
    /// out-of-memory handling: with this set, while the stream is made. Over shared memory a page
    /// is charged to the memory cgroup of the process that touches it first (the sender, for a
    /// receive ring it writes before its owner reads it).
    public var prefaultRings = false
    /// How long the peer may send nothing before the stream fails with `.timedOut`, after every
    /// byte that arrived (default 30 s; nil: for ever). Each side sends a heartbeat after a second
    /// without a word while it is driven, so a live peer is never silent that long; a cut link or
    /// a peer that stopped calling is. At least `peerTimeoutRange.lowerBound`.
    public var peerTimeout: Duration? = .seconds(30)
    /// Where the library logs (default: nowhere): connections made, accepted and closed at
    /// `.debug`, refused peers and protocol errors at `.warning`, with the peer and the transport
    /// as metadata; nothing on the data path. Takes no part in equality.
    public var logger: Logger {
        get { _logger.value }
        set { _logger = IgnoredInEquality(newValue) }
    }
    private var _logger = IgnoredInEquality(Logger(label: "rstream", factory: { _ in SwiftLogNoOpLogHandler() }))

    public static let ringSizeRange = EndpointShape.ringSizes
    public static let txQueueSizeRange = EndpointShape.txQueueSizes
    public static let rxCreditRange = EndpointShape.rxCreditCounts
    public static let busyPollWindowRange: ClosedRange<Duration> = .zero ... .seconds(1)
    public static let peerTimeoutRange: ClosedRange<Duration> = Liveness.shortestPeerTimeout ... .seconds(86_400)

    public init() {}

    /// Throws `.invalidOption` naming the first value out of range.
    public func validate() throws(RStreamError) {
        func check(_ name: String, _ value: Int, _ range: ClosedRange<Int>) throws(RStreamError) {
            guard range.contains(value) else {
                throw RStreamError(.invalidOption, code: 22, "\(name) \(value) is outside \(range.lowerBound)...\(range.upperBound)")
            }
        }
        try check("send ring size", sendRingSize, Self.ringSizeRange)
        try check("receive ring size", receiveRingSize, Self.ringSizeRange)
        try check("tx queue size", txQueueSize, Self.txQueueSizeRange)
        try check("rx credits", rxCredits, Self.rxCreditRange)
        guard Self.busyPollWindowRange.contains(busyPollWindow) else {
            throw RStreamError(.invalidOption, code: 22, "busy-poll window \(busyPollWindow) is outside 0 seconds...1 second")
        }
        if let peerTimeout, !Self.peerTimeoutRange.contains(peerTimeout) {
            throw RStreamError(.invalidOption, code: 22, "peer timeout \(peerTimeout) is outside \(Self.peerTimeoutRange.lowerBound)...\(Self.peerTimeoutRange.upperBound) (nil: never)")
        }
        if let numaNode { try NUMAPlacement.check(node: numaNode) }
        if let provider, provider.isEmpty || provider.contains(where: { $0 == ";" || $0.isWhitespace }) {
            throw RStreamError(.invalidOption, code: 22, "provider \"\(provider)\" is not a core provider's name")
        }
    }
}

/// A value that every other of its type equals (a logger in the options, which compare by
/// their settings).
struct IgnoredInEquality<Value: Sendable>: Sendable, Equatable {
    var value: Value
    init(_ value: Value) { self.value = value }
    static func == (_: Self, _: Self) -> Bool { true }
}
