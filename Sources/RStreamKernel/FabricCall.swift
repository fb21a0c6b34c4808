import CLibfabric
#if canImport(Glibc)
import Glibc
#endif

/// Runs one libfabric call, or returns the injected failure for its site.
@inline(__always)
package func fabricCall<R: BinaryInteger>(_ site: FaultSite, _ call: () -> R) -> Int {
    if let rc = FaultInjection.injected(at: site) { return rc }
    return Int(call())
}

/// Runs one libfabric call that returns 0 on success; throws its error with `context`.
@inline(__always)
package func fabricCheck<R: BinaryInteger>(
    _ site: FaultSite, _ context: @autoclosure () -> String, _ call: () -> R
) throws(RStreamError) {
    let rc = fabricCall(site, call)
    if rc < 0 { throw RStreamError.fabric(rc, context()) }
}

/// Closes a libfabric object whose owner is going away. Nothing can be done about a failure
/// then, but it means a leak or a bug (an object closed with dependents still open): debug
/// builds stop on it, so tests see it.
@inline(__always)
package func closeFabricObject(_ object: UnsafeMutablePointer<fid>, _ what: @autoclosure () -> String) {
    let rc = fi_close(object)
    assert(rc == 0, "fi_close(\(what())) failed: \(rc)")
}
