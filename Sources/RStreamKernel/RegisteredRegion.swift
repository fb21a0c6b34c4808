#if canImport(Glibc)
import Glibc
#endif

/// Page-aligned memory for one ring or word area, zeroed, owned by whoever holds this value.
/// Registration with a domain is done by the transport; this type only owns the bytes.
///
/// Invariant: `base` is page-aligned, `count` bytes long, and freed exactly once (in deinit).
package struct PageAlignedRegion: ~Copyable {
    package let base: UnsafeMutableRawPointer
    package let count: Int

    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    package init(byteCount: Int) {
        precondition(byteCount > 0)
        let rounded = (byteCount + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        var pointer: UnsafeMutableRawPointer?
        let rc = posix_memalign(&pointer, Self.pageSize, rounded)
        guard rc == 0, let pointer else { fatalError("posix_memalign(\(rounded)) failed: \(rc)") }
        memset(pointer, 0, rounded)
        base = pointer
        count = byteCount
    }

    deinit { free(base) }

    package var buffer: UnsafeMutableRawBufferPointer { .init(start: base, count: count) }
}
