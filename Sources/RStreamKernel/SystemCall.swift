#if canImport(Glibc)
import Glibc
#endif

// The one place where the same-host transport's system calls turn errno into an error (the
// fabric path has `fabricCall`). Each call is wrapped once, where it is made, under its
// `FaultSite`; `EINTR` is retried.

/// True, with errno set, when a test has made the next call at `site` fail (debug builds): the
/// caller then takes the call's failure path as if the call had failed.
@inline(__always)
package func injectedErrno(_ site: FaultSite) -> Bool {
    guard let rc = FaultInjection.injected(at: site) else { return false }
    errno = Int32(truncatingIfNeeded: -rc)
    return true
}

/// Runs `body` (a system call returning -1 with errno on failure) until it is not interrupted;
/// throws the errno as an `RStreamError` whose context names the call.
@inline(__always)
package func systemCall<R: BinaryInteger>(_ site: FaultSite, _ what: @autoclosure () -> String, _ body: () -> R) throws(RStreamError) -> R {
    while true {
        let rc = injectedErrno(site) ? -1 : body()
        if rc >= 0 { return rc }
        let code = errno
        if code == EINTR { continue }
        throw RStreamError.system(code, what())
    }
}

/// `systemCall` for a call whose "would block" is an answer, not an error: nil on EAGAIN.
@inline(__always)
package func nonblockingSystemCall<R: BinaryInteger>(_ site: FaultSite, _ what: @autoclosure () -> String, _ body: () -> R) throws(RStreamError) -> R? {
    while true {
        let rc = injectedErrno(site) ? -1 : body()
        if rc >= 0 { return rc }
        let code = errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return nil }
        throw RStreamError.system(code, what())
    }
}

extension RStreamError {
    /// An error for errno `code`, classified like the fabric's codes.
    package static func system(_ code: Int32, _ context: String) -> RStreamError {
        let kind: Kind
        switch code {
        case ECONNREFUSED, ENOENT: kind = .connectionRefused
        case ECONNRESET, EPIPE, ENOTCONN, ECONNABORTED: kind = .connectionReset
        case ETIMEDOUT: kind = .timedOut
        case ENOMEM: kind = .outOfMemory
        default: kind = .system
        }
        return RStreamError(kind, code: code, context)
    }
}
