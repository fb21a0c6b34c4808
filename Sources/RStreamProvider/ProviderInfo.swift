import CLibfabric
import CProviderSupport
import RStreamKernel
#if canImport(Glibc)
import Glibc
#endif

/// What `fi_getinfo` answers: one `FI_EP_SOCK_STREAM` entry for every stream-capable entry of
/// every usable core, filtered by the caller's hints the way the man pages say.
///
/// The core behind an entry travels in the fabric name, as `core:core-fabric-name` (for example
/// `tcp:127.0.0.0/8`), so that `fi_fabric`, `fi_passive_ep` and `fi_endpoint` know which core to
/// open; the domain name is the core's.
enum ProviderInfo {
    static let capabilities = UInt64(FI_MSG | FI_SEND | FI_RECV) | FI_LOCAL_COMM | FI_REMOTE_COMM
    static let defaultRingSize = 32 * 1024
    static let defaultQueueSize = 384

    /// The peer timeout C programs get: `RSTREAM_PEER_TIMEOUT` seconds (0: never), else 30 s.
    /// A value that is no number, or outside 3 s...1 day, makes `fi_endpoint` fail with
    /// -FI_EINVAL rather than run with a setting the caller did not ask for.
    static func peerTimeout(environment value: String? = getenv("RSTREAM_PEER_TIMEOUT").map { String(cString: $0) }) -> Result<Duration?, RStreamError> {
        guard let value else { return .success(EndpointShape.defaultPeerTimeout) }
        guard let seconds = Double(value), seconds.isFinite, seconds >= 0 else {
            return .failure(RStreamError(.invalidOption, code: EINVAL, "RSTREAM_PEER_TIMEOUT=\(value) is not a number of seconds"))
        }
        if seconds == 0 { return .success(nil) }
        let timeout = Duration.milliseconds(Int64(min(seconds, 86_400 * 2) * 1000))
        guard timeout >= Liveness.shortestPeerTimeout, timeout <= .seconds(86_400) else {
            return .failure(RStreamError(.invalidOption, code: EINVAL, "RSTREAM_PEER_TIMEOUT=\(value) is outside 3...86400 seconds (0: never)"))
        }
        return .success(timeout)
    }
    static let iovLimit = 64

    /// Whether C programs' endpoints share completion queues where the core allows it
    /// (`StreamOptions.sharedCompletions`): `RSTREAM_SHARED_COMPLETIONS=0` turns it off.
    static func sharedCompletions(environment value: String? = getenv("RSTREAM_SHARED_COMPLETIONS").map { String(cString: $0) }) -> Bool {
        value != "0"
    }

    /// Whether C programs' endpoints touch every ring page when made (`StreamOptions.prefaultRings`):
    /// `RSTREAM_PREFAULT_RINGS=1` (any value but 0) turns it on; unset, pages come in on first use.
    static func prefaultRings(environment value: String? = getenv("RSTREAM_PREFAULT_RINGS").map { String(cString: $0) }) -> Bool {
        value.map { $0 != "0" } ?? false
    }

    /// What the provider needs to know of one of its own `fi_info`s (or a caller's copy of one).
    struct Facts {
        var core: String
        var coreFabric: String
        var iwarp: Bool
        var source: [UInt8]?
        var destination: [UInt8]?

        init(_ info: UnsafePointer<fi_info>) {
            let fabricName = info.pointee.fabric_attr?.pointee.name.map { String(cString: $0) } ?? ""
            if let colon = fabricName.firstIndex(of: ":") {
                core = String(fabricName[..<colon])
                coreFabric = String(fabricName[fabricName.index(after: colon)...])
            } else {
                core = fabricName
                coreFabric = ""
            }
            iwarp = info.pointee.ep_attr?.pointee.protocol == UInt32(FI_PROTO_IWARP)
            source = Self.bytes(info.pointee.src_addr, info.pointee.src_addrlen)
            destination = Self.bytes(info.pointee.dest_addr, info.pointee.dest_addrlen)
        }

        static func bytes(_ pointer: UnsafeMutableRawPointer?, _ length: Int) -> [UInt8]? {
            guard let pointer, length > 0 else { return nil }
            return Array(UnsafeRawBufferPointer(start: pointer, count: length))
        }

        var requirements: CoreRequirements { CoreRequirements(provider: core.isEmpty ? nil : core, iwarp: iwarp) }
        /// The entry names the same-host transport (fabric `shm:...`).
        var isSameHost: Bool { core == SameHostSelection.name }
    }

    /// A caller's hints, checked: nil when no entry of this provider can meet them.
    struct Wanted {
        var iwarp = false
        var addressFormat = UInt32(FI_FORMAT_UNSPEC)
        var fabricName: String?
        var domainName: String?
        /// Connection events advance whenever the event queue is read, with no data call needed,
        /// so a caller asking for automatic control progress (fabtests' `stream_msg`) gets it.
        var controlProgress = FI_PROGRESS_MANUAL
        var txSize: Int?
        var rxSize: Int?

        init?(_ hints: UnsafePointer<fi_info>?) {
            guard let hints = hints?.pointee else { return }
            if let ep = hints.ep_attr?.pointee {
                guard ep.type == FI_EP_UNSPEC || ep.type == FI_EP_SOCK_STREAM else { return nil }
                switch ep.protocol {
                case UInt32(FI_PROTO_UNSPEC), UInt32(FI_PROTO_RSTREAM): iwarp = false
                case UInt32(FI_PROTO_IWARP): iwarp = true
                default: return nil
                }
                guard ep.tx_ctx_cnt <= 1 || ep.tx_ctx_cnt == FI_SHARED_CONTEXT, ep.rx_ctx_cnt <= 1 else { return nil }
            }
            guard hints.caps & ~ProviderInfo.capabilities == 0 else { return nil }
            switch hints.addr_format {
            case UInt32(FI_FORMAT_UNSPEC), UInt32(FI_SOCKADDR), UInt32(FI_SOCKADDR_IN), UInt32(FI_SOCKADDR_IN6):
                addressFormat = hints.addr_format
            default: return nil
            }
            if let domain = hints.domain_attr?.pointee {
                // FI_THREAD_SAFE covers every weaker level a caller may ask for. Data progress is
                // manual: the library starts no thread.
                guard domain.data_progress != FI_PROGRESS_AUTO else { return nil }
                if domain.control_progress == FI_PROGRESS_AUTO { controlProgress = FI_PROGRESS_AUTO }
                domainName = domain.name.map { String(cString: $0) }
            }
            if let fabric = hints.fabric_attr?.pointee {
                fabricName = fabric.name.map { String(cString: $0) }
            }
            if let tx = hints.tx_attr?.pointee {
                guard tx.caps & ~ProviderInfo.capabilities == 0, tx.size <= EndpointShape.txQueueSizes.upperBound,
                      tx.iov_limit <= ProviderInfo.iovLimit else { return nil }
                if tx.size > 0 { txSize = max(tx.size, EndpointShape.txQueueSizes.lowerBound) }
            }
            if let rx = hints.rx_attr?.pointee {
                guard rx.caps & ~ProviderInfo.capabilities == 0, rx.size <= EndpointShape.rxCreditCounts.upperBound,
                      rx.iov_limit <= ProviderInfo.iovLimit else { return nil }
                if rx.size > 0 { rxSize = max(rx.size, EndpointShape.rxCreditCounts.lowerBound) }
            }
        }

        func accepts(_ core: UnsafeMutablePointer<fi_info>, fabricName name: String) -> Bool {
            let format = core.pointee.addr_format
            guard format == UInt32(FI_SOCKADDR_IN) || format == UInt32(FI_SOCKADDR_IN6) else { return false }
            switch addressFormat {
            case UInt32(FI_SOCKADDR_IN), UInt32(FI_SOCKADDR_IN6): if format != addressFormat { return false }
            default: break
            }
            if let fabricName, fabricName != name { return false }
            if let domainName, domainName != String(cString: core.pointee.domain_attr.pointee.name) { return false }
            return true
        }
    }

    static func getinfo(
        version: UInt32, node: UnsafePointer<CChar>?, service: UnsafePointer<CChar>?, flags: UInt64,
        hints: UnsafePointer<fi_info>?, into result: UnsafeMutablePointer<UnsafeMutablePointer<fi_info>?>?
    ) -> Int32 {
        guard let result else { return -Int32(FI_EINVAL) }
        result.pointee = nil
        guard let wanted = Wanted(hints) else { return -Int32(FI_ENODATA) }
        let nodeText = node.map { String(cString: $0) }
        let serviceText = service.map { String(cString: $0) }
        var head: UnsafeMutablePointer<fi_info>?
        var tail: UnsafeMutablePointer<fi_info>?
        // A fabric name in the hints names its core: only that one is asked. "shm" (in the hints'
        // fabric name or in RSTREAM_PROVIDER) is the same-host transport: its entries are the
        // first core's, under the fabric name `shm:core-fabric-name` (the addresses are the
        // same: a same-host listener serves the port its fabric listener holds). Otherwise the
        // same-host entries follow every core's, so a program that takes the first entry gets
        // the fabric unless it asks.
        let named = wanted.fabricName.flatMap { $0.split(separator: ":", maxSplits: 1).first.map(String.init) }
        let sameHostOnly = named == SameHostSelection.name || (named == nil && SameHostSelection(provider: nil) == .sameHostOnly)
        var sameHostEntries: [UnsafeMutablePointer<fi_info>] = []
        var sameHostCore: String?
        for core in FabricInfo.candidateProviders(explicit: nil) where named == nil || named == core || sameHostOnly {
            guard let coreInfo = try? FabricInfo.queryCore(core, iwarp: wanted.iwarp, node: nodeText, service: serviceText,
                                                           flags: flags, customize: { coreHints in
                copyAddresses(from: hints, to: coreHints, format: wanted.addressFormat)
            }) else { continue }
            var cursor: UnsafeMutablePointer<fi_info>? = coreInfo.head
            while let entry = cursor {
                cursor = entry.pointee.next
                let coreFabric = String(cString: entry.pointee.fabric_attr.pointee.name)
                let fabricName = "\(core):\(coreFabric)"
                if !sameHostOnly, wanted.accepts(entry, fabricName: fabricName), let info = make(from: entry, fabricName: fabricName, wanted) {
                    if let tail { tail.pointee.next = info } else { head = info }
                    tail = info
                }
                // iWarp mode has no meaning between two processes of one host.
                let sameHostName = "\(SameHostSelection.name):\(coreFabric)"
                if !wanted.iwarp, sameHostCore == nil || sameHostCore == core, wanted.accepts(entry, fabricName: sameHostName),
                   named == nil || sameHostOnly, let info = make(from: entry, fabricName: sameHostName, wanted) {
                    sameHostCore = core
                    sameHostEntries.append(info)
                }
            }
        }
        for info in sameHostEntries {
            if let tail { tail.pointee.next = info } else { head = info }
            tail = info
        }
        guard let head else { return -Int32(FI_ENODATA) }
        result.pointee = head
        return 0
    }

    private static func copyAddresses(from hints: UnsafePointer<fi_info>?, to core: UnsafeMutablePointer<fi_info>, format: UInt32) {
        if format == UInt32(FI_SOCKADDR_IN) || format == UInt32(FI_SOCKADDR_IN6) { core.pointee.addr_format = format }
        guard let hints else { return }
        copyAddresses(of: hints, into: core)
    }

    /// Copies `from`'s source and destination addresses into `into` (which has none yet).
    private static func copyAddresses(of from: UnsafePointer<fi_info>, into: UnsafeMutablePointer<fi_info>) {
        (into.pointee.src_addr, into.pointee.src_addrlen) = duplicate(Facts.bytes(from.pointee.src_addr, from.pointee.src_addrlen))
        (into.pointee.dest_addr, into.pointee.dest_addrlen) = duplicate(Facts.bytes(from.pointee.dest_addr, from.pointee.dest_addrlen))
    }

    /// A malloc'd copy, which `fi_freeinfo` frees.
    static func duplicate(_ bytes: UnsafeRawPointer, _ count: Int) -> UnsafeMutableRawPointer? {
        guard let copy = malloc(count) else { return nil }
        copy.copyMemory(from: bytes, byteCount: count)
        return copy
    }

    static func duplicate(_ bytes: [UInt8]?) -> (UnsafeMutableRawPointer?, Int) {
        guard let bytes, !bytes.isEmpty else { return (nil, 0) }
        return bytes.withUnsafeBytes { (duplicate($0.baseAddress!, $0.count), $0.count) }
    }

    /// This provider's entry over one core entry.
    private static func make(from core: UnsafeMutablePointer<fi_info>, fabricName: String, _ wanted: Wanted) -> UnsafeMutablePointer<fi_info>? {
        guard let info = fi_allocinfo() else { return nil }
        let c = core.pointee
        info.pointee.caps = capabilities
        info.pointee.mode = 0
        info.pointee.addr_format = wanted.addressFormat == UInt32(FI_SOCKADDR) ? UInt32(FI_SOCKADDR) : c.addr_format
        copyAddresses(of: core, into: info)
        let tx = info.pointee.tx_attr!
        tx.pointee.caps = UInt64(FI_MSG | FI_SEND)
        tx.pointee.msg_order = UInt64(FI_ORDER_SAS)
        tx.pointee.comp_order = UInt64(FI_ORDER_NONE)
        tx.pointee.inject_size = EndpointShape.ringSizes.lowerBound
        tx.pointee.size = wanted.txSize ?? defaultQueueSize
        tx.pointee.iov_limit = iovLimit
        tx.pointee.rma_iov_limit = 0
        let rx = info.pointee.rx_attr!
        rx.pointee.caps = UInt64(FI_MSG | FI_RECV)
        rx.pointee.msg_order = UInt64(FI_ORDER_SAS)
        rx.pointee.comp_order = UInt64(FI_ORDER_NONE)
        rx.pointee.size = wanted.rxSize ?? defaultQueueSize
        rx.pointee.iov_limit = iovLimit
        let ep = info.pointee.ep_attr!
        ep.pointee.type = FI_EP_SOCK_STREAM
        ep.pointee.protocol = UInt32(wanted.iwarp ? FI_PROTO_IWARP : FI_PROTO_RSTREAM)
        ep.pointee.protocol_version = UInt32(ConnectionBlock.version)
        ep.pointee.max_msg_size = EndpointShape.ringSizes.upperBound
        ep.pointee.tx_ctx_cnt = 1
        ep.pointee.rx_ctx_cnt = 1
        let domain = info.pointee.domain_attr!
        domain.pointee.name = strdup(c.domain_attr.pointee.name)
        domain.pointee.threading = FI_THREAD_SAFE
        domain.pointee.control_progress = wanted.controlProgress
        domain.pointee.data_progress = FI_PROGRESS_MANUAL
        domain.pointee.resource_mgmt = FI_RM_ENABLED
        domain.pointee.av_type = FI_AV_UNSPEC
        domain.pointee.mr_mode = 0
        domain.pointee.ep_cnt = c.domain_attr.pointee.ep_cnt
        domain.pointee.tx_ctx_cnt = c.domain_attr.pointee.ep_cnt
        domain.pointee.rx_ctx_cnt = c.domain_attr.pointee.ep_cnt
        domain.pointee.max_ep_tx_ctx = 1
        domain.pointee.max_ep_rx_ctx = 1
        domain.pointee.max_err_data = 256
        let fabric = info.pointee.fabric_attr!
        fabric.pointee.name = strdup(fabricName)
        fabric.pointee.prov_version = RStreamProvider.version
        return info
    }
}
