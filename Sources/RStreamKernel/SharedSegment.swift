import CSameHost
import CNuma
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Owner of one memory segment shared with the peer process: a sealed memfd and its mapping here.
///
/// A segment this side makes is sealed against shrinking and growing before the peer sees it (a
/// peer that could shrink it would make our next touch a SIGBUS), and, when the peer may only read
/// it, against writable mappings made from now on (`F_SEAL_FUTURE_WRITE`: the peer's read-only
/// mapping can never be made writable). A segment the peer made is mapped only after its seals
/// and size are checked: it is hostile input like a word off the wire.
///
/// Invariant: `base` maps `count` bytes (a whole number of pages) until deinit, which unmaps it;
/// `descriptor` is the memfd of a segment this side made, open until it has been passed to the
/// peer (`closeDescriptor`) or deinit; -1 for the peer's (closed once mapped) or once closed.
package struct SharedSegment: ~Copyable {
    package let base: UnsafeMutableRawPointer
    package let count: Int
    private let fd: Atomic<Int32>
    package var descriptor: Int32 { fd.load(ordering: .acquiring) }

    /// Closes this side's memfd once the peer holds it (the mapping keeps the memory): a stream
    /// then holds no descriptor for its segments.
    package func closeDescriptor() {
        let fd = fd.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { close(fd) }
    }

    package static func pages(_ bytes: Int) -> Int {
        (bytes + PageAlignedRegion.pageSize - 1) / PageAlignedRegion.pageSize * PageAlignedRegion.pageSize
    }

    /// Makes a zeroed segment of at least `byteCount` bytes, mapped read-write here, its pages on
    /// `node` (nil: the default policy); sealed for the peer to write (`peerMayWrite`) or only read.
    /// `prefault`: every page is touched now (resident before the data path needs it); otherwise
    /// each comes in on first use, by either side, under the same binding (a shared mapping's
    /// policy is the segment's, whoever touches it).
    package init(making name: String, byteCount: Int, node: Int?, peerMayWrite: Bool, prefault: Bool = true) throws(RStreamError) {
        let count = Self.pages(byteCount)
        let fd = try systemCall(.memfdCreate, "memfd_create(\(name))") { rs_memfd_create(name) }
        do throws(RStreamError) {
            _ = try systemCall(.truncate, "ftruncate(\(name), \(count))") { ftruncate(fd, off_t(count)) }
            let mapped = injectedErrno(.mapSegment) ? MAP_FAILED : mmap(nil, count, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            guard let mapped, mapped != MAP_FAILED else { throw RStreamError.system(errno, "mmap(\(name), \(count) bytes)") }
            if let node { numa_tonode_memory(mapped, count, Int32(node)) } // before the first touch
            if prefault { memset(mapped, 0, count) } // places every page now, not on the data path
            guard !injectedErrno(.sealSegment), rs_seal(fd, peerMayWrite ? 0 : 1) == 0 else {
                let code = errno
                munmap(mapped, count)
                throw RStreamError.system(code, "sealing \(name)")
            }
            base = mapped
        } catch {
            close(fd)
            throw error
        }
        self.count = count
        self.fd = Atomic(fd)
    }

    /// Maps a segment the peer made and passed as `fd` (this takes the descriptor over), after
    /// checking that it is a memfd sealed against shrinking (and, for one we only read, against
    /// our writing being relied on: we map it read-only) and at least `byteCount` bytes long.
    package init(mapping fd: Int32, byteCount: Int, writable: Bool, what: String) throws(RStreamError) {
        let count = Self.pages(byteCount)
        do throws(RStreamError) {
            let seals = rs_get_seals(fd)
            guard seals >= 0 else { throw RStreamError.protocolViolation("the peer's \(what) is not a sealable memory segment") }
            guard rs_seals_forbid_shrink(seals) != 0 else {
                throw RStreamError.protocolViolation("the peer's \(what) is not sealed against shrinking")
            }
            var status = stat()
            _ = try systemCall(.statSegment, "fstat(the peer's \(what))") { fstat(fd, &status) }
            guard status.st_size >= count else {
                throw RStreamError.protocolViolation("the peer's \(what) has \(status.st_size) bytes; \(count) were announced")
            }
            let mapped = injectedErrno(.mapPeerSegment) ? MAP_FAILED : mmap(nil, count, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0)
            guard let mapped, mapped != MAP_FAILED else { throw RStreamError.system(errno, "mmap(the peer's \(what), \(count) bytes)") }
            base = mapped
        } catch {
            close(fd)
            throw error
        }
        // The mapping keeps the memory; the descriptor is not needed again.
        close(fd)
        self.count = count
        self.fd = Atomic(-1)
    }

    deinit {
        munmap(base, count)
        closeDescriptor()
    }

    package var buffer: UnsafeMutableRawBufferPointer { .init(start: base, count: count) }
}
