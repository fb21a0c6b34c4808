import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Every libfabric call the kernel makes goes through `fabricCall`, so that a test can make any one
/// of them fail with a chosen code (the way swift-system's IORing tests inject errors).
package enum FabricCallSite: Int, Sendable, CaseIterable {
    case getinfo, fabric, domain, eqOpen, cqOpen, endpoint, passiveEndpoint, bind, enable, listen,
         connect, accept, reject, memoryRegister, write, send, receive, cqRead, eqRead, getname, getopt
}

package enum FaultInjection {
    // Packed as site << 32 | code, 0 when disarmed: one relaxed load is all the hot path pays.
    private static let armed = Atomic<UInt64>(0)
    // Only the thread that armed a fault trips it, so tests running beside it are not disturbed.
    private static let armingThread = Atomic<UInt>(0)

    /// Makes the next call at `site` on this thread return `-code` instead of running.
    package static func failNext(_ site: FabricCallSite, code: Int32) {
        armingThread.store(UInt(pthread_self()), ordering: .sequentiallyConsistent)
        armed.store(UInt64(site.rawValue + 1) << 32 | UInt64(UInt32(code)), ordering: .sequentiallyConsistent)
    }

    package static func disarm() { armed.store(0, ordering: .sequentiallyConsistent) }

    @inline(__always)
    fileprivate static func injected(at site: FabricCallSite) -> Int? {
        let word = armed.load(ordering: .relaxed)
        guard word != 0, word >> 32 == UInt64(site.rawValue + 1),
              armingThread.load(ordering: .acquiring) == UInt(pthread_self()) else { return nil }
        guard armed.compareExchange(expected: word, desired: 0, ordering: .acquiringAndReleasing).exchanged else {
            return nil
        }
        return -Int(UInt32(truncatingIfNeeded: word))
    }
}

/// Runs one libfabric call, or returns the injected failure for its site.
@inline(__always)
package func fabricCall<R: BinaryInteger>(_ site: FabricCallSite, _ call: () -> R) -> Int {
    if let rc = FaultInjection.injected(at: site) { return rc }
    return Int(call())
}

/// Runs one libfabric call that returns 0 on success; throws its error with `context`.
@inline(__always)
package func fabricCheck<R: BinaryInteger>(
    _ site: FabricCallSite, _ context: @autoclosure () -> String, _ call: () -> R
) throws(RStreamError) {
    let rc = fabricCall(site, call)
    if rc < 0 { throw RStreamError.fabric(rc, context()) }
}
