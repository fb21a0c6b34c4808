import CNuma
#if canImport(Glibc)
import Glibc
#endif

/// Page-aligned memory for one ring or word area, zeroed, owned by whoever holds this value, on a
/// chosen NUMA node when one is given. Registration is done by the transport; this type only owns
/// the bytes.
///
/// Invariant: `base` is page-aligned, `count` bytes long (`rounded` with its page padding), every
/// page touched once (so it is placed), and freed exactly once (in deinit) by the allocator that
/// made it.
package struct PageAlignedRegion: ~Copyable {
    package let base: UnsafeMutableRawPointer
    package let count: Int
    private let rounded: Int
    package let node: Int?

    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// `node`: a node already checked by `NUMAPlacement.check`, or nil for the default policy.
    /// An allocation that fails (the node is full, the process is out of memory) is an
    /// `.outOfMemory` error: a host program must not die because a node is full.
    package init(byteCount: Int, node: Int? = nil) throws(RStreamError) {
        precondition(byteCount > 0)
        let rounded = (byteCount + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        let pointer = try RegionAllocator.allocate(rounded, node: node)
        memset(pointer, 0, rounded)
        base = pointer
        count = byteCount
        self.rounded = rounded
        self.node = node
    }

    deinit {
        if node != nil { numa_free(base, rounded) } else { free(base) }
    }

    package var buffer: UnsafeMutableRawBufferPointer { .init(start: base, count: count) }
}

/// The two allocators behind `PageAlignedRegion`; a test makes the next one fail with
/// `FaultInjection.failNext(.allocation, code: ENOMEM)` (debug builds only).
private enum RegionAllocator {
    static func allocate(_ rounded: Int, node: Int?) throws(RStreamError) -> UnsafeMutableRawPointer {
        if let rc = FaultInjection.injected(at: .allocation) {
            throw RStreamError(.outOfMemory, code: Int32(-rc), "allocating \(rounded) bytes (injected)")
        }
        if let node {
            // Bound to the node, placed on first touch.
            guard let pointer = numa_alloc_onnode(rounded, Int32(node)) else {
                throw RStreamError(.outOfMemory, code: ENOMEM, "numa_alloc_onnode(\(rounded) bytes, node \(node)) failed")
            }
            return pointer
        }
        var pointer: UnsafeMutableRawPointer?
        let rc = posix_memalign(&pointer, PageAlignedRegion.pageSize, rounded)
        guard rc == 0, let pointer else {
            throw RStreamError(.outOfMemory, code: ENOMEM, "posix_memalign(\(rounded) bytes) failed with \(rc)")
        }
        return pointer
    }
}
