import CLibfabric
import Synchronization

@inline(__always)
package func fidOf<T>(_ object: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<fid> {
    // Every libfabric object begins with its `struct fid`.
    UnsafeMutableRawPointer(object).assumingMemoryBound(to: fid.self)
}

/// Owner of an open fabric and one domain on it, shared by every endpoint opened in that domain.
///
/// Invariant: both handles are open for the object's lifetime; the domain closes before the fabric,
/// and only after every endpoint, queue and registration holding a reference to it is gone.
package final class Domain: @unchecked Sendable {
    package let fabric: UnsafeMutablePointer<fid_fabric>
    package let domain: UnsafeMutablePointer<fid_domain>
    package let attributes: CoreAttributes
    private let nextKey = Atomic<UInt64>(1)

    private init(info: UnsafeMutablePointer<fi_info>) throws(RStreamError) {
        attributes = FabricInfo.attributes(of: info)
        var fabric: UnsafeMutablePointer<fid_fabric>?
        try fabricCheck(.fabric, "fi_fabric(\(attributes.provider))") { fi_fabric(info.pointee.fabric_attr, &fabric, nil) }
        var domain: UnsafeMutablePointer<fid_domain>?
        do throws(RStreamError) {
            try fabricCheck(.domain, "fi_domain(\(attributes.domain))") { fi_domain(fabric, info, &domain, nil) }
        } catch {
            closeFabricObject(fidOf(fabric!), "fabric")
            throw error
        }
        self.fabric = fabric!
        self.domain = domain!
    }

    deinit {
        closeFabricObject(fidOf(domain), "domain")
        closeFabricObject(fidOf(fabric), "fabric")
    }

    /// The groups of shared completion queues of this domain (by whether they have a wait
    /// descriptor), kept while a member uses them.
    private struct WeakGroup { weak var group: CompletionGroup? }
    private let groups = Mutex<[Bool: [WeakGroup]]>([:])
    private let clientQueue = Mutex<WeakEventQueue>(WeakEventQueue())
    private struct WeakEventQueue { weak var queue: EventQueue? }

    /// A shared completion queue with room for `reserving` more entries (one is opened when every
    /// open group is full), and the member number reserved in it.
    package func reserveCompletionGroup(reserving: Int, waitDescriptor: Bool) throws(RStreamError) -> (CompletionGroup, Int, UInt16) {
        try groups.withCheckedLock(key: lockKey(self)) { (all: inout [Bool: [WeakGroup]]) throws(RStreamError) -> (CompletionGroup, Int, UInt16) in
            var list = all[waitDescriptor, default: []].filter { $0.group.map { $0.failure == nil } ?? false }
            defer { all[waitDescriptor] = list }
            for entry in list {
                if let group = entry.group, let (number, generation) = group.reserve(reserving) { return (group, number, generation) }
            }
            // A core whose queues are smaller is asked for smaller ones.
            var lastError = RStreamError(.fabric, "no shared completion queue could be opened")
            for capacity in [CompletionGroup.defaultCapacity, 16384, 4096] where capacity >= reserving {
                do throws(RStreamError) {
                    let group = try CompletionGroup(domain: self, waitDescriptor: waitDescriptor, capacity: capacity)
                    guard let (number, generation) = group.reserve(reserving) else { continue }
                    list.append(WeakGroup(group: group))
                    return (group, number, generation)
                } catch {
                    lastError = error
                }
            }
            throw lastError
        }
    }

    /// The event queue that this domain's connecting endpoints share (one per domain, and the
    /// domain is one per process: made on first use, kept while an endpoint uses it). It routes
    /// each event by its endpoint.
    package func clientEventQueue() throws(RStreamError) -> EventQueue {
        try clientQueue.withCheckedLock(key: lockKey(self) + 1) { (weak: inout WeakEventQueue) throws(RStreamError) -> EventQueue in
            if let queue = weak.queue { return queue }
            let queue = try EventQueue(domain: self)
            weak.queue = queue
            return queue
        }
    }

    /// A key for a registration when the core lets us choose (no `FI_MR_PROV_KEY`).
    package func makeKey() -> UInt64 { nextKey.wrappingAdd(1, ordering: .relaxed).oldValue }

    private struct WeakDomain { weak var domain: Domain? }
    private static let cache = Mutex<[String: WeakDomain]>([:])
    private final class CacheOwner: Sendable {}
    private static let cacheOwner = CacheOwner()

    /// The open domain for `info`'s provider, fabric and domain name, opened once per process and
    /// shared while anyone uses it.
    package static func shared(for info: UnsafeMutablePointer<fi_info>) throws(RStreamError) -> Domain {
        let a = FabricInfo.attributes(of: info)
        let key = "\(a.provider)|\(a.fabric)|\(a.domain)"
        return try cache.withCheckedLock(key: lockKey(cacheOwner)) { (cache: inout [String: WeakDomain]) throws(RStreamError) -> Domain in
            if let existing = cache[key]?.domain { return existing }
            let domain = try Domain(info: info)
            cache[key] = WeakDomain(domain: domain)
            return domain
        }
    }
}
