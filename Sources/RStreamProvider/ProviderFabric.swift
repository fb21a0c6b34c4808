import CLibfabric
import CProviderSupport
import RStreamKernel
#if canImport(Glibc)
import Glibc
#endif

/// The fabric a caller opened: which core its objects will use. The core's own fabric and domain
/// are opened (and shared) by the kernel when an endpoint needs them.
final class ProviderFabric {
    let handle: UnsafeMutablePointer<fid_fabric>
    let core: String

    private init(core: String, apiVersion: UInt32, context: UnsafeMutableRawPointer?) {
        self.core = core
        handle = CHandle.allocate(fid_fabric.self)
        CHandle.attach(self, to: handle)
        handle.pointee.fid = fid(fclass: Int(FI_CLASS_FABRIC), context: context, ops: Self.fidOps)
        handle.pointee.ops = Self.fabricOps
        handle.pointee.api_version = apiVersion
    }

    static func open(
        _ attr: UnsafeMutablePointer<fi_fabric_attr>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<fid_fabric>?>?,
        _ context: UnsafeMutableRawPointer?
    ) -> Int32 {
        guard let attr, let out else { return -Int32(FI_EINVAL) }
        let name = attr.pointee.name.map { String(cString: $0) } ?? ""
        let core = name.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
        guard core == SameHostSelection.name || FabricInfo.candidateProviders(explicit: nil).contains(core) else {
            return -Int32(FI_ENODATA)
        }
        out.pointee = ProviderFabric(core: core, apiVersion: attr.pointee.api_version, context: context).handle
        return 0
    }

    nonisolated(unsafe) static let fidOps = table(fi_ops(
        size: MemoryLayout<fi_ops>.size,
        close: { fid in
            CHandle.free(UnsafeRawPointer(fid!))
            return 0
        },
        bind: rs_no_bind, control: rs_no_control, ops_open: rs_no_ops_open, tostr: rs_no_tostr, ops_set: rs_no_ops_set))

    nonisolated(unsafe) static let fabricOps = table(fi_ops_fabric(
        size: MemoryLayout<fi_ops_fabric>.size,
        domain: { fabric, info, domain, context in
            ProviderDomain.open(CHandle.owner(of: fabric!), info, domain, context)
        },
        passive_ep: { fabric, info, pep, context in
            ProviderPassiveEndpoint.open(CHandle.owner(of: fabric!), info, pep, context)
        },
        eq_open: { fabric, attr, eq, context in
            ProviderEventQueue.open(attr, eq, context)
        },
        wait_open: rs_no_wait_open,
        trywait: { _, fids, count in
            ProviderFabric.tryWait(fids, Int(count))
        },
        domain2: { fabric, info, domain, flags, context in
            flags == 0 ? ProviderDomain.open(CHandle.owner(of: fabric!), info, domain, context) : -Int32(FI_EBADFLAGS)
        }))

    /// `fi_trywait`: 0 when the caller may block on the descriptors of every object in `fids`,
    /// -FI_EAGAIN when one of them is ready now (an event queued, bytes readable).
    static func tryWait(_ fids: UnsafeMutablePointer<UnsafeMutablePointer<fid>?>?, _ count: Int) -> Int32 {
        guard let fids else { return -Int32(FI_EINVAL) }
        for i in 0..<count {
            guard let object = fids[i] else { return -Int32(FI_EINVAL) }
            let rc: Int32
            if CHandle.isOurs(object, ops: ProviderEventQueue.fidOps) {
                rc = CHandle.owner(of: object, as: ProviderEventQueue.self).tryWait()
            } else if CHandle.isOurs(object, ops: ProviderEndpoint.fidOps) {
                rc = CHandle.owner(of: object, as: ProviderEndpoint.self).tryWait()
            } else if CHandle.isOurs(object, ops: ProviderPassiveEndpoint.fidOps) {
                rc = CHandle.owner(of: object, as: ProviderPassiveEndpoint.self).tryWait()
            } else {
                rc = -Int32(FI_EINVAL)
            }
            if rc != 0 { return rc }
        }
        return 0
    }
}

/// The domain a caller opened. It holds nothing of the core's: endpoints open (and share) the
/// core's domain through the kernel.
final class ProviderDomain {
    let handle: UnsafeMutablePointer<fid_domain>
    let fabric: ProviderFabric

    private init(fabric: ProviderFabric, context: UnsafeMutableRawPointer?) {
        self.fabric = fabric
        handle = CHandle.allocate(fid_domain.self)
        CHandle.attach(self, to: handle)
        handle.pointee.fid = fid(fclass: Int(FI_CLASS_DOMAIN), context: context, ops: ProviderFabric.fidOps)
        handle.pointee.ops = Self.domainOps
        handle.pointee.mr = rs_no_mr_ops()
    }

    static func open(
        _ fabric: ProviderFabric, _ info: UnsafeMutablePointer<fi_info>?,
        _ out: UnsafeMutablePointer<UnsafeMutablePointer<fid_domain>?>?, _ context: UnsafeMutableRawPointer?
    ) -> Int32 {
        guard let info, let out else { return -Int32(FI_EINVAL) }
        if let type = info.pointee.ep_attr?.pointee.type, type != FI_EP_UNSPEC && type != FI_EP_SOCK_STREAM {
            return -Int32(FI_ENODATA)
        }
        out.pointee = ProviderDomain(fabric: fabric, context: context).handle
        return 0
    }

    nonisolated(unsafe) static let domainOps = table(fi_ops_domain(
        size: MemoryLayout<fi_ops_domain>.size,
        av_open: rs_no_av_open, cq_open: rs_no_cq_open,
        endpoint: { domain, info, ep, context in
            ProviderEndpoint.open(CHandle.owner(of: domain!), info, ep, context)
        },
        scalable_ep: rs_no_scalable_ep, cntr_open: rs_no_cntr_open, poll_open: rs_no_poll_open,
        stx_ctx: rs_no_stx_ctx, srx_ctx: rs_no_srx_ctx, query_atomic: rs_no_query_atomic,
        query_collective: rs_no_query_collective,
        endpoint2: { domain, info, ep, flags, context in
            flags == 0 ? ProviderEndpoint.open(CHandle.owner(of: domain!), info, ep, context) : -Int32(FI_EBADFLAGS)
        }))
}
