import CNuma
#if canImport(Glibc)
import Glibc
#endif

/// Page-aligned memory for one ring or word area, zeroed, owned by whoever holds this value, on a
/// chosen NUMA node when one is given. Registration is done by the transport; this type only owns
/// the bytes.
///
/// `prefault`: every page is touched now, so it is resident (and placed) before the data path
/// needs it; otherwise pages come in on first use, by the same placement rule (a node's binding
/// is the mapping's policy, not the toucher's), and a page never used costs nothing.
///
/// Invariant: `base` is page-aligned, `count` bytes long (`rounded` with its page padding), reads
/// as zeros until written (the kernel zeroes a fresh mapping; heap memory is cleared, which also
/// touches it), and is freed exactly once (in deinit) by the allocator that made it.
package struct PageAlignedRegion: ~Copyable {
    package let base: UnsafeMutableRawPointer
    package let count: Int
    private let rounded: Int
    package let node: Int?
    private let source: RegionAllocator.Source

    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// `node`: a node already checked by `NUMAPlacement.check`, or nil for the default policy.
    /// An allocation that fails (no address space, the process's limits) is an `.outOfMemory`
    /// error. Pages themselves are the kernel's to find when each is first touched (when the
    /// stream is made if `prefault`, else on first use): a node with no free page left then meets
    /// the kernel's out-of-memory handling, not an error, with or without prefaulting.
    package init(byteCount: Int, node: Int? = nil, prefault: Bool = true) throws(RStreamError) {
        precondition(byteCount > 0)
        let rounded = (byteCount + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        let (pointer, source) = try RegionAllocator.allocate(rounded, node: node, lazily: !prefault)
        if prefault { memset(pointer, 0, rounded) } // heap memory is only used when prefaulting
        base = pointer
        count = byteCount
        self.rounded = rounded
        self.node = node
        self.source = source
    }

    deinit {
        switch source {
        case .node: numa_free(base, rounded)
        case .heap: free(base)
        case .mapping: munmap(base, rounded)
        }
    }

    package var buffer: UnsafeMutableRawBufferPointer { .init(start: base, count: count) }
}

/// The allocators behind `PageAlignedRegion`; a test makes the next one fail with
/// `FaultInjection.failNext(.allocation, code: ENOMEM)` (debug builds only).
private enum RegionAllocator {
    enum Source { case node, heap, mapping }

    /// Bound to `node` (libnuma: a mapping whose pages are placed on first touch), else from the
    /// heap, or, when the pages are to come in `lazily`, an anonymous mapping of its own (fresh
    /// zero pages: reused heap memory could already be resident, and hold the host's old bytes).
    static func allocate(_ rounded: Int, node: Int?, lazily: Bool) throws(RStreamError) -> (UnsafeMutableRawPointer, Source) {
        if let rc = FaultInjection.injected(at: .allocation) {
            throw RStreamError(.outOfMemory, code: Int32(-rc), "allocating \(rounded) bytes (injected)")
        }
        if let node {
            guard let pointer = numa_alloc_onnode(rounded, Int32(node)) else {
                throw RStreamError(.outOfMemory, code: ENOMEM, "numa_alloc_onnode(\(rounded) bytes, node \(node)) failed")
            }
            return (pointer, .node)
        }
        if lazily {
            let mapped = mmap(nil, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let mapped, mapped != MAP_FAILED else {
                throw RStreamError(.outOfMemory, code: errno, "mmap(\(rounded) bytes) failed")
            }
            return (mapped, .mapping)
        }
        var pointer: UnsafeMutableRawPointer?
        let rc = posix_memalign(&pointer, PageAlignedRegion.pageSize, rounded)
        guard rc == 0, let pointer else {
            throw RStreamError(.outOfMemory, code: ENOMEM, "posix_memalign(\(rounded) bytes) failed with \(rc)")
        }
        return (pointer, .heap)
    }
}
