import Logging
import SystemPackage
import RStreamKernel

/// Listens on one address and accepts streams one after another, over the fabric and, from
/// processes of this host, over shared memory (a Unix socket named for the port). Many accepted
/// fabric streams live at once on the listener's single event queue, each matched to its own endpoint.
public final class StreamListener: Sendable {
    let passive: StreamAcceptor
    public let options: StreamOptions

    /// The address actually bound (the real port when 0 was asked).
    public var host: String { passive.host }
    public var port: UInt16 { passive.port }
    /// True when it also serves same-host streams (false when another listener holds the name of
    /// this port's Unix socket).
    public var servesSameHost: Bool { passive.sameHost != nil }

    public init(host: String = "0.0.0.0", port: UInt16 = 0, backlog: Int = 128,
                options: StreamOptions = StreamOptions()) throws(RStreamError) {
        try options.validate()
        guard backlog > 0 else { throw RStreamError(.invalidOption, code: 22, "backlog \(backlog) must be positive") }
        passive = try StreamAcceptor(host: host, port: port, backlog: backlog, requirements: options.requirements)
        self.options = options
        options.logger.debug("listening", metadata: ["listener": "\(self.host):\(self.port)", "same-host": "\(servesSameHost)"])
    }

    /// A descriptor `poll()` reports readable when a connection request may have arrived (nil
    /// where the core has no wait descriptors). Arm with `prepareToWait()`, poll, then `accept`.
    public var descriptor: Int32? { passive.waitSet?.descriptor }

    /// `descriptor` as swift-system's `FileDescriptor` (the listener owns it: do not close it).
    public var fileDescriptor: FileDescriptor? { descriptor.map { FileDescriptor(rawValue: $0) } }

    /// True when the caller may sleep on `descriptor`; false when a request is already waiting.
    public func prepareToWait() -> Bool { passive.prepareToWait() }

    /// Waits for the next connection and returns its stream. A request that breaks the protocol
    /// (a bad connection block, another version or mode) is refused with its reason, and thrown as
    /// `.protocolViolation`; the listener stays usable.
    public func accept(timeout: Duration? = nil) throws(RStreamError) -> StreamConnection {
        do {
            let engine = try passive.accept(shape: options.shape, deadline: timeout.map { ContinuousClock.now + $0 })
            return StreamConnection(engine: engine, options: options, event: "accepted")
        } catch {
            logRefusal(error)
            throw error
        }
    }

    /// A refused peer (its request broke the protocol) is a warning; the listener goes on.
    func logRefusal(_ error: RStreamError) {
        guard error.kind == .protocolViolation else { return }
        options.logger.warning("refused a peer: \(error.context)", metadata: ["listener": "\(host):\(port)"])
    }

    /// Stops listening: an `accept` blocked in another thread (or awaiting, in a task) ends with
    /// `.closed`, and so does every later one; once none is inside, the port and the same-host
    /// socket are released, so a new listener can take them. Streams already accepted go on. A
    /// second close does nothing.
    public func close() {
        guard !passive.isClosed else { return }
        passive.close()
        options.logger.debug("stopped listening", metadata: ["listener": "\(host):\(port)"])
    }
}

/// A core provider on this machine that can carry a stream, and what it says of itself.
public struct CoreProvider: Sendable, Equatable {
    public var name: String
    public var fabric: String
    public var domain: String
    public var addressFormat: String
    /// `FI_RX_CQ_DATA`: a write with remote CQ data uses up a posted receive.
    public var writeConsumesReceive: Bool
    /// `FI_MR_VIRT_ADDR`: remote addresses are virtual; else offsets into the registration.
    public var virtualAddressing: Bool
    public var providerKeys: Bool
    public var localRegistration: Bool
    public var cqDataSize: Int
    public var maxTxQueueSize: Int
    public var maxRxQueueSize: Int
    public var injectSize: Int
    public var dataProgress: String

    /// Every core provider here that can carry a stream (an `FI_EP_MSG` endpoint with `FI_MSG` and `FI_RMA`).
    public static func available() -> [CoreProvider] {
        FabricInfo.discover().map { a in
            CoreProvider(name: a.provider, fabric: a.fabric, domain: a.domain, addressFormat: a.addressFormat,
                         writeConsumesReceive: a.writeConsumesReceive, virtualAddressing: a.virtualAddressing,
                         providerKeys: a.providerKeys, localRegistration: a.localRegistration, cqDataSize: a.cqDataSize,
                         maxTxQueueSize: a.maxTxSize, maxRxQueueSize: a.maxRxSize, injectSize: a.injectSize,
                         dataProgress: a.dataProgress)
        }
    }
}
