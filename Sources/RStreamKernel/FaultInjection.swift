import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where a test can make the kernel's next call fail with a chosen code (the way swift-system's
/// IORing tests inject errors): every libfabric call (through `fabricCall`), every allocation of
/// a ring or hot-state region (`allocation`), and every system call of the same-host transport
/// (through `systemCall` or `injectedErrno`). Debug builds only: in release builds the check
/// compiles to nothing.
package enum FaultSite: Int, Sendable, CaseIterable {
    // libfabric
    case getinfo, fabric, domain, eqOpen, cqOpen, endpoint, passiveEndpoint, bind, enable, listen,
         connect, accept, reject, memoryRegister, write, send, receive, cqRead, eqRead, getname, getopt
    case allocation
    // the same-host transport's system calls
    case unixSocket, unixBind, unixBindClient, unixListen, unixConnect, unixAccept, sendMessage, receiveMessage,
         memfdCreate, truncate, mapSegment, mapPeerSegment, sealSegment, statSegment

    /// The sites of the same-host transport.
    package static let sameHost: [FaultSite] = [.unixSocket, .unixBind, .unixBindClient, .unixListen, .unixConnect,
                                                 .unixAccept, .sendMessage, .receiveMessage, .memfdCreate, .truncate,
                                                 .mapSegment, .mapPeerSegment, .sealSegment, .statSegment]
}

package enum FaultInjection {
    #if DEBUG
    // Packed as (site + 1) << 48 | (calls to fail after the next) << 32 | code, 0 when disarmed:
    // one relaxed load is all a debug build pays, and one compare-and-exchange trips it.
    private static let armed = Atomic<UInt64>(0)
    // Only the thread that armed a fault trips it, so tests running beside it are not disturbed.
    private static let armingThread = Atomic<UInt>(0)
    #endif

    /// Makes the next call at `site` on this thread (the next `times`) return `-code` instead of
    /// running (debug builds; a release build ignores it).
    package static func failNext(_ site: FaultSite, code: Int32, times: Int = 1) {
        #if DEBUG
        precondition((1...0x1_0000).contains(times))
        armingThread.store(UInt(pthread_self()), ordering: .sequentiallyConsistent)
        armed.store(UInt64(site.rawValue + 1) << 48 | UInt64(times - 1) << 32 | UInt64(UInt32(code)), ordering: .sequentiallyConsistent)
        #endif
    }

    package static func disarm() {
        #if DEBUG
        armed.store(0, ordering: .sequentiallyConsistent)
        #endif
    }

    /// True while a fault is armed and not yet tripped.
    package static var isArmed: Bool {
        #if DEBUG
        return armed.load(ordering: .sequentiallyConsistent) != 0
        #else
        return false
        #endif
    }

    /// The injected failure (a negative code) for a call at `site` on this thread, once.
    @inline(__always)
    package static func injected(at site: FaultSite) -> Int? {
        #if DEBUG
        let word = armed.load(ordering: .relaxed)
        guard word != 0, word >> 48 == UInt64(site.rawValue + 1),
              armingThread.load(ordering: .acquiring) == UInt(pthread_self()) else { return nil }
        let more = (word >> 32) & 0xFFFF
        let next = more > 0 ? word - (1 << 32) : 0
        guard armed.compareExchange(expected: word, desired: next, ordering: .acquiringAndReleasing).exchanged else {
            return nil
        }
        return -Int(UInt32(truncatingIfNeeded: word))
        #else
        return nil
        #endif
    }
}

#if DEBUG
extension FaultInjection {
    /// Runs `body` with no descriptor left to open in this process (the soft descriptor limit
    /// lowered to the lowest free number, so every new descriptor fails with `EMFILE`), then
    /// restores the limit, also when `body` throws; false when the limit could not be read or
    /// lowered (`body` did not run). For tests that run alone (`--no-parallel`): the limit is the
    /// whole process's, so nothing else may open or close a descriptor or change the limit
    /// meanwhile, and a child started meanwhile inherits it.
    package static func withNoDescriptorLeft(_ body: () throws -> Void) rethrows -> Bool {
        var saved = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) == 0 else { return false }
        let lowest = open("/dev/null", O_RDONLY | O_CLOEXEC) // the lowest free number
        guard lowest >= 0 else { return false }
        close(lowest)
        var lowered = saved
        lowered.rlim_cur = rlim_t(lowest) // every number below it is taken: no new one fits
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0 else { return false }
        defer { _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) }
        try body()
        return true
    }
}
#endif
