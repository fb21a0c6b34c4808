/// The raw core underneath RStream, for `rstream perf`: `fi_writedata` of whole messages into the
/// peer's registered region, with no ring accounting, no copies and no credits. It is the floor
/// RStream's figures are compared with. Both sides must run it (a peer's word here is not the rstream protocol).
///
/// Invariant: at most `window` operations are outstanding, which the caller keeps within the
/// transmit queue and the peer's posted receives.
package struct CoreBaseline: ~Copyable {
    private var transport: FabricTransport
    private let peerRegion: Int
    private let events: UnsafeMutableBufferPointer<TransportEvent>
    private var outstanding = 0
    private var arrivedBytes = 0
    private var arrivedWords: [UInt32] = []

    /// Messages are carried in writes of at most this many bytes (the largest legal ring).
    package static let regionSize = ConnectionBlock.ringSizes.upperBound

    package static var shape: EndpointShape {
        var shape = EndpointShape(sendRingSize: regionSize, receiveRingSize: regionSize, txQueueSize: 256, rxCredits: 256, iwarp: false)
        shape.waitDescriptor = false // the floor: nothing the raw core does not need
        // Its region is never written: untouched, the kernel would send every page from its one
        // shared zero page, always in cache.
        shape.prefaultRings = true
        return shape
    }

    package init(_ accepted: consuming AcceptedConnection) {
        peerRegion = accepted.peer.ringSize
        transport = accepted.transport
        events = .allocate(capacity: 16)
        events.initialize(repeating: .transmitted(writeSlot: nil))
    }

    /// Connects as the active side.
    package static func connect(host: String, port: UInt16, provider: String?) throws(RStreamError) -> CoreBaseline {
        let offered = try ActiveConnector.offer(host: host, port: port, shape: shape,
                                                requirements: CoreRequirements(provider: provider, iwarp: false),
                                                deadline: .now + .seconds(10))
        guard case .connected(let data) = offered.event else {
            throw RStreamError(.connectionRefused, "the core baseline peer did not accept: \(offered.event)")
        }
        let peer = try ConnectionBlock.decode(data, expectIwarp: false)
        offered.transport.connect(to: peer)
        return CoreBaseline(AcceptedConnection(transport: offered.transport, peer: peer))
    }

    deinit { events.deallocate() } // the transport closes its endpoint as it goes

    private mutating func poll() throws(RStreamError) {
        let n = try transport.poll(into: events)
        for i in 0..<n {
            switch events[i] {
            case .transmitted: outstanding -= 1
            case .notified(let word?, _):
                if word & 0x8000_0000 != 0 { arrivedBytes += Int(word & 0x7FFF_FFFF) } else { arrivedWords.append(word) }
            case .notified(nil, _): throw RStreamError.protocolViolation("core baseline: a completion without data")
            case .failed(let code, _): throw RStreamError.fabric(Int(code), "core baseline")
            }
        }
    }

    /// Writes `size` bytes (in writes of at most `regionSize`) keeping up to `window` outstanding.
    package mutating func sendMessage(size: Int, window: Int) throws(RStreamError) {
        var left = size
        while left > 0 {
            let n = min(left, Self.regionSize, peerRegion)
            while outstanding >= window { try poll() }
            while try transport.write(sendOffset: 0, length: n, remoteOffset: 0, word: 0x8000_0000 | UInt32(n), writeSlot: 0) != .complete {
                try poll()
            }
            outstanding += 1
            left -= n
        }
    }

    /// Busy-polls until `size` more bytes have arrived.
    package mutating func receiveMessage(size: Int) throws(RStreamError) {
        while arrivedBytes < size { try poll() }
        arrivedBytes -= size
    }

    package mutating func sendWord(_ word: UInt32) throws(RStreamError) {
        precondition(word & 0x8000_0000 == 0)
        while outstanding >= 8 { try poll() }
        while try !transport.send(word: word) { try poll() }
        outstanding += 1
    }

    package mutating func receiveWord() throws(RStreamError) -> UInt32 {
        while arrivedWords.isEmpty { try poll() }
        return arrivedWords.removeFirst()
    }

    /// Waits until every operation this side posted has completed.
    package mutating func drain() throws(RStreamError) {
        while outstanding > 0 { try poll() }
    }
}

extension PassiveListener {
    /// Accepts a peer for the core baseline.
    package func acceptCoreBaseline() throws(RStreamError) -> CoreBaseline {
        CoreBaseline(try acceptConnection(shape: CoreBaseline.shape, deadline: nil))
    }
}

/// A listener for core-baseline peers.
package final class CoreBaselineListener: @unchecked Sendable {
    private let passive: PassiveListener
    package var port: UInt16 { passive.port }

    package init(host: String, port: UInt16, provider: String?) throws(RStreamError) {
        passive = try PassiveListener(host: host, port: port, backlog: 16,
                                      requirements: CoreRequirements(provider: provider, iwarp: false))
    }

    package func accept() throws(RStreamError) -> CoreBaseline { try passive.acceptCoreBaseline() }
}
