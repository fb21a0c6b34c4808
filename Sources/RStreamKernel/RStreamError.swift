import CLibfabric
#if canImport(Glibc)
import Glibc
#endif

/// The one error type of RStream: what went wrong, the libfabric (or errno) code behind it, and a
/// sentence of context. "Would block" is never an error; it is a result of the calls that can block.
public struct RStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong. A struct of named values rather than an enum, so that new kinds can be
    /// added without breaking a caller's `switch` (which therefore needs a `default`).
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// An option was out of range or inconsistent; `context` names it and its allowed range.
        public static let invalidOption = Kind("invalidOption")
        /// No core provider on this machine can carry a stream with the requested attributes.
        public static let noProvider = Kind("noProvider")
        /// Nothing was listening at the address.
        public static let connectionRefused = Kind("connectionRefused")
        /// The listener refused the request; `context` carries the reason it sent.
        public static let rejected = Kind("rejected")
        /// The host could not be resolved or reached.
        public static let unreachable = Kind("unreachable")
        /// The operation did not finish before its deadline, or the peer was silent for longer
        /// than the peer timeout (reported after every byte that arrived).
        public static let timedOut = Kind("timedOut")
        /// The peer vanished without a FIN (reported after every byte that arrived), or left after
        /// its FIN while this side still had bytes to send (reported by send and flush).
        public static let connectionReset = Kind("connectionReset")
        /// The peer broke the protocol (a bad connection block or word); the connection is closed.
        public static let protocolViolation = Kind("protocolViolation")
        /// The stream was used after shutdown or close.
        public static let closed = Kind("closed")
        /// No usable address could be had for the connection: over shared memory, every client
        /// name of the address and port dialled that was tried is taken, or the listener's name
        /// is held by a socket of another user, or its backlog stayed full past the connect's
        /// patience (abstract names have no owner). A connect that chose its transport by itself
        /// goes over the fabric instead.
        public static let addressUnavailable = Kind("addressUnavailable")
        /// Memory for a ring or the stream's state could not be had (the allocation or mapping
        /// was refused: the process's limits, its address space); nothing was left half made. A
        /// node without free pages is met when a page is first touched, by the kernel's
        /// out-of-memory handling, not as this error.
        public static let outOfMemory = Kind("outOfMemory")
        /// A libfabric call failed for another reason.
        public static let fabric = Kind("fabric")
        /// A system call of the same-host transport failed for another reason.
        public static let system = Kind("system")
    }

    public var kind: Kind
    /// A positive libfabric error number (`FI_E*`, which are errno values), or 0.
    public var code: Int32
    public var context: String

    public init(_ kind: Kind, code: Int32 = 0, _ context: String) {
        self.kind = kind
        self.code = code
        self.context = context
    }

    public var description: String {
        guard code != 0 else { return "\(kind): \(context)" }
        return "\(kind): \(context) (\(String(cString: fi_strerror(code))), code \(code))"
    }
}

extension RStreamError {
    /// An error for a libfabric return value `rc` (negative `FI_E*`), classified by its code.
    package static func fabric(_ rc: Int, _ context: String) -> RStreamError {
        let code = Int32(truncatingIfNeeded: rc < 0 ? -rc : rc)
        if code == FI_ECANCELED {
            // The core flushes what was posted when its connection goes down: which of the
            // flushed entries and the connection's own error comes first is chance, so one
            // vanished peer is one code (a C program saw -FI_ECANCELED or -FI_ECONNRESET).
            return RStreamError(.connectionReset, code: FI_ECONNRESET, "\(context): the core cancelled it, its connection is gone")
        }
        let kind: Kind
        switch code {
        case FI_ECONNREFUSED: kind = .connectionRefused
        case FI_ETIMEDOUT: kind = .timedOut
        case FI_ECONNRESET, FI_ECONNABORTED, FI_ENOTCONN,
             EPIPE, FI_ESHUTDOWN:
            kind = .connectionReset
        case FI_EHOSTUNREACH, FI_ENETUNREACH, FI_EADDRNOTAVAIL:
            kind = .unreachable
        default: kind = .fabric
        }
        return RStreamError(kind, code: code, context)
    }

    package static func protocolViolation(_ context: String) -> RStreamError {
        RStreamError(.protocolViolation, code: EPROTO, context)
    }
}
