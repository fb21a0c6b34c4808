import CLibfabric
#if canImport(Glibc)
import Glibc
#endif

/// The one error type of RStream: what went wrong, the libfabric (or errno) code behind it, and a
/// sentence of context. "Would block" is never an error; it is a result of the calls that can block.
public struct RStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// An option was out of range or inconsistent; `context` names it and its allowed range.
        case invalidOption
        /// No core provider on this machine can carry a stream with the requested attributes.
        case noProvider
        /// Nothing was listening at the address.
        case connectionRefused
        /// The listener refused the request; `context` carries the reason it sent.
        case rejected
        /// The host could not be resolved or reached.
        case unreachable
        /// The operation did not finish before its deadline.
        case timedOut
        /// The peer vanished without a FIN; reported after every byte that arrived.
        case connectionReset
        /// The peer broke protocol v3 (a bad connection block or word); the connection is closed.
        case protocolViolation
        /// The stream was used after shutdown or close.
        case closed
        /// A libfabric call failed for another reason.
        case fabric
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
        let kind: Kind
        switch code {
        case FI_ECONNREFUSED: kind = .connectionRefused
        case FI_ETIMEDOUT: kind = .timedOut
        case FI_ECONNRESET, FI_ECONNABORTED, FI_ENOTCONN,
             EPIPE, FI_ECANCELED, FI_ESHUTDOWN:
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
