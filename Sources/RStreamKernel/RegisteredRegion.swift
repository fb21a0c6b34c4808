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
    package init(byteCount: Int, node: Int? = nil) {
        precondition(byteCount > 0)
        let rounded = (byteCount + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        var pointer: UnsafeMutableRawPointer?
        if let node {
            pointer = numa_alloc_onnode(rounded, Int32(node)) // bound to the node, placed on first touch
            guard pointer != nil else { fatalError("numa_alloc_onnode(\(rounded), \(node)) failed") }
        } else {
            let rc = posix_memalign(&pointer, Self.pageSize, rounded)
            guard rc == 0, pointer != nil else { fatalError("posix_memalign(\(rounded)) failed: \(rc)") }
        }
        memset(pointer!, 0, rounded)
        base = pointer!
        count = byteCount
        self.rounded = rounded
        self.node = node
    }

    deinit {
        if node != nil { numa_free(base, rounded) } else { free(base) }
    }

    package var buffer: UnsafeMutableRawBufferPointer { .init(start: base, count: count) }
}
