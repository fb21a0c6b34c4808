import CLibfabric
import CFabricShim
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel asks of a core provider, and what the core answered that the protocol obeys.
package struct CoreRequirements: Sendable {
    package var provider: String?
    package var iwarp: Bool
    package init(provider: String?, iwarp: Bool) {
        self.provider = provider
        self.iwarp = iwarp
    }
}

/// The attributes the kernel reads from a core's `fi_info` and obeys.
package struct CoreAttributes: Sendable, Equatable {
    package var provider: String
    package var fabric: String
    package var domain: String
    /// `FI_RX_CQ_DATA`: a write with remote CQ data consumes a posted receive.
    package var writeConsumesReceive: Bool
    /// `FI_MR_VIRT_ADDR`: remote addresses are virtual addresses, else offsets into the registration.
    package var virtualAddressing: Bool
    /// `FI_MR_PROV_KEY`: the provider picks registration keys.
    package var providerKeys: Bool
    /// `FI_MR_LOCAL`: local buffers need a registration's descriptor.
    package var localRegistration: Bool
    package var cqDataSize: Int
    package var maxTxSize: Int
    package var maxRxSize: Int
    package var injectSize: Int
    package var addressFormat: String
    package var dataProgress: String
}

/// Owner of one `fi_info` list returned by `fi_getinfo` (or handed over by a CONNREQ event).
///
/// Invariant: `head` is non-nil and freed exactly once, with `fi_freeinfo`, in deinit.
package struct FabricInfo: ~Copyable {
    package let head: UnsafeMutablePointer<fi_info>

    package init(adopting head: UnsafeMutablePointer<fi_info>) { self.head = head }

    deinit { fi_freeinfo(head) }

    package static let apiVersion = rs_fi_version(1, 17)

    /// The cores worth trying, best first: `RSTREAM_PROVIDER`, else every core on this machine
    /// that offers a connected endpoint with `FI_MSG | FI_RMA`: verbs, tcp and sockets first, in
    /// that order, then any other (libfabric 1.17's `net`, for one).
    package static func candidateProviders(explicit: String?) -> [String] {
        if let explicit, !explicit.isEmpty { return [explicit] }
        // "shm" names the same-host transport, not a core: the cores are tried then.
        if let env = getenv("RSTREAM_PROVIDER"), case let name = String(cString: env), !name.isEmpty, name != SameHostSelection.name { return [name] }
        return installedCores
    }

    private static let preferredCores = ["verbs", "tcp", "sockets"]

    /// Asked of libfabric once per process. Utility providers (`ofi_*`, layered over a core) and
    /// this project's own provider are not cores.
    private static let installedCores: [String] = {
        guard let hints = fi_allocinfo() else { return preferredCores }
        defer { fi_freeinfo(hints) }
        hints.pointee.ep_attr.pointee.type = FI_EP_MSG
        hints.pointee.caps = UInt64(FI_MSG | FI_RMA)
        var result: UnsafeMutablePointer<fi_info>?
        guard fi_getinfo(apiVersion, nil, nil, 0, hints, &result) == 0, let result else { return preferredCores }
        defer { fi_freeinfo(result) }
        var found: [String] = []
        var cursor: UnsafeMutablePointer<fi_info>? = result
        while let entry = cursor {
            cursor = entry.pointee.next
            guard let name = entry.pointee.fabric_attr.pointee.prov_name.map({ String(cString: $0) }),
                  !name.contains(";"), !name.hasPrefix("ofi_"), name != "rstream", !found.contains(name) else { continue }
            found.append(name)
        }
        return preferredCores.filter(found.contains) + found.filter { !preferredCores.contains($0) }.sorted()
    }()

    /// `fi_getinfo` for a connected `FI_EP_MSG` endpoint with `FI_MSG | FI_RMA`, the protocol's
    /// mr_mode hints and send-after-write ordering; `source` marks node/service as the local address.
    package static func query(
        _ requirements: CoreRequirements, node: String?, service: String?, source: Bool
    ) throws(RStreamError) -> FabricInfo {
        var lastError = RStreamError(.noProvider, "no core provider was tried")
        for provider in candidateProviders(explicit: requirements.provider) {
            do throws(RStreamError) {
                return try queryCore(provider, iwarp: requirements.iwarp, node: node, service: service,
                                     flags: source ? UInt64(FI_SOURCE) : 0)
            } catch {
                lastError = error
                if error.kind == .unreachable { throw error }
            }
        }
        throw lastError
    }

    /// Every fi_info one core offers for a stream endpoint; `flags` and `customize` carry what a
    /// caller of the provider asked for (addresses, FI_NUMERICHOST). Manual data progress is
    /// asked for first; a core that only offers automatic progress is still usable (it
    /// progresses itself), so it is asked again without the preference.
    package static func queryCore(
        _ provider: String, iwarp: Bool, node: String?, service: String?, flags: UInt64,
        customize: (UnsafeMutablePointer<fi_info>) -> Void = { _ in }
    ) throws(RStreamError) -> FabricInfo {
        let requirements = CoreRequirements(provider: provider, iwarp: iwarp)
        do throws(RStreamError) {
            return try queryOne(provider: provider, progress: FI_PROGRESS_MANUAL, requirements, node: node,
                                service: service, flags: flags, customize: customize)
        } catch {
            if error.kind == .unreachable { throw error }
            return try queryOne(provider: provider, progress: FI_PROGRESS_UNSPEC, requirements, node: node,
                                service: service, flags: flags, customize: customize)
        }
    }

    private static func queryOne(
        provider: String, progress: fi_progress, _ requirements: CoreRequirements,
        node: String?, service: String?, flags: UInt64,
        customize: (UnsafeMutablePointer<fi_info>) -> Void
    ) throws(RStreamError) -> FabricInfo {
        let source = flags & UInt64(FI_SOURCE) != 0
        guard let hints = fi_allocinfo() else { throw RStreamError(.fabric, code: ENOMEM, "fi_allocinfo failed") }
        defer { fi_freeinfo(hints) }
        hints.pointee.ep_attr.pointee.type = FI_EP_MSG
        hints.pointee.caps = UInt64(FI_MSG | FI_RMA)
        hints.pointee.mode = UInt64(FI_RX_CQ_DATA)
        hints.pointee.domain_attr.pointee.mr_mode = Int32(FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY)
        hints.pointee.domain_attr.pointee.threading = FI_THREAD_SAFE
        hints.pointee.domain_attr.pointee.data_progress = progress
        // DATA words (and FIN) must not overtake the writes before them.
        hints.pointee.tx_attr.pointee.msg_order = UInt64(FI_ORDER_SAW | FI_ORDER_SAS | FI_ORDER_WAW)
        hints.pointee.fabric_attr.pointee.prov_name = strdup(provider)
        customize(hints)

        var result: UnsafeMutablePointer<fi_info>?
        let rc = fabricCall(.getinfo) {
            fi_getinfo(apiVersion, node, service, flags, hints, &result)
        }
        if rc < 0 {
            let code = Int32(-rc)
            let place = [node, service].compactMap { $0 }.joined(separator: ":")
            if code == FI_ENODATA, !source, node != nil {
                // A name that does not resolve and a core that is absent both answer ENODATA; the
                // difference is whether any core can serve the address at all.
                if !Self.resolves(node!, service) {
                    throw RStreamError(.unreachable, code: code, "cannot resolve \(place)")
                }
            }
            throw RStreamError(code == FI_ENODATA ? .noProvider : .fabric, code: code,
                               "core provider \(provider) offers no stream endpoint for \(place.isEmpty ? "any address" : place)")
        }
        guard let result else { throw RStreamError(.noProvider, "fi_getinfo returned nothing for \(provider)") }
        let info = FabricInfo(adopting: result)
        let attributes = info.attributes
        if !requirements.iwarp && attributes.cqDataSize < 4 {
            throw RStreamError(.noProvider, "core \(provider) carries \(attributes.cqDataSize) bytes of CQ data; normal mode needs 4 (use iWarp mode)")
        }
        return info
    }

    private static func resolves(_ node: String, _ service: String?) -> Bool {
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(node, service, nil, &res)
        if let res { freeaddrinfo(res) }
        return rc == 0
    }

    package var attributes: CoreAttributes { Self.attributes(of: head) }

    package static func attributes(of info: UnsafeMutablePointer<fi_info>) -> CoreAttributes {
        let domain = info.pointee.domain_attr.pointee
        let mrMode = domain.mr_mode
        func string(_ p: UnsafeMutablePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
        let progress: String
        switch domain.data_progress {
        case FI_PROGRESS_MANUAL: progress = "manual"
        case FI_PROGRESS_AUTO: progress = "auto"
        default: progress = "unspec"
        }
        let format: String
        switch info.pointee.addr_format {
        case UInt32(FI_SOCKADDR_IN): format = "sockaddr_in"
        case UInt32(FI_SOCKADDR_IN6): format = "sockaddr_in6"
        case UInt32(FI_SOCKADDR_IB): format = "sockaddr_ib"
        default: format = "format \(info.pointee.addr_format)"
        }
        return CoreAttributes(
            provider: string(info.pointee.fabric_attr.pointee.prov_name),
            fabric: string(info.pointee.fabric_attr.pointee.name),
            domain: string(domain.name),
            writeConsumesReceive: info.pointee.mode & UInt64(FI_RX_CQ_DATA) != 0,
            virtualAddressing: mrMode & Int32(FI_MR_VIRT_ADDR) != 0,
            providerKeys: mrMode & Int32(FI_MR_PROV_KEY) != 0,
            localRegistration: mrMode & Int32(FI_MR_LOCAL) != 0,
            cqDataSize: Int(domain.cq_data_size),
            maxTxSize: Int(info.pointee.tx_attr.pointee.size),
            maxRxSize: Int(info.pointee.rx_attr.pointee.size),
            injectSize: Int(info.pointee.tx_attr.pointee.inject_size),
            addressFormat: format,
            dataProgress: progress
        )
    }

    /// Every core on this machine that can carry a stream, with its attributes (one row per
    /// provider and domain).
    package static func discover() -> [CoreAttributes] {
        var rows: [CoreAttributes] = []
        for provider in candidateProviders(explicit: nil) {
            for iwarp in [false, true] {
                guard let info = try? query(CoreRequirements(provider: provider, iwarp: iwarp), node: nil, service: nil, source: false) else { continue }
                var cursor: UnsafeMutablePointer<fi_info>? = info.head
                while let entry = cursor {
                    let row = attributes(of: entry)
                    if !rows.contains(where: { $0.provider == row.provider && $0.domain == row.domain && $0.addressFormat == row.addressFormat }) {
                        rows.append(row)
                    }
                    cursor = entry.pointee.next
                }
                break
            }
        }
        return rows
    }
}
