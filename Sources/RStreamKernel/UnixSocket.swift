import CSameHost
#if canImport(Glibc)
import Glibc
#endif

/// The same-host transport's set-up socket: a Unix `SOCK_SEQPACKET` socket in the abstract
/// namespace (no file to clean up; scoped, like a TCP port, to the network namespace), one wrapper
/// per system call. Messages keep their boundaries, and descriptors travel with `SCM_RIGHTS`.
package enum UnixSocket {
    private static func withAddress<R>(name: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            precondition(bytes.count < path.count, "an abstract name fits sun_path")
            path[0] = 0 // abstract: a leading zero byte, then the name (no terminator)
            for (i, byte) in bytes.enumerated() { path[i + 1] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    package static func make() throws(RStreamError) -> Int32 {
        try systemCall(.unixSocket, "socket(AF_UNIX, SOCK_SEQPACKET)") {
            Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
    }

    /// Binds `fd` to the abstract `name`; false when another socket holds it.
    package static func bind(_ fd: Int32, name: String) throws(RStreamError) -> Bool {
        let site: FaultSite = name.hasPrefix(SameHostName.clientPrefix) ? .unixBindClient : .unixBind
        let rc = injectedErrno(site) ? -1 : withAddress(name: name) { Glibc.bind(fd, $0, $1) }
        if rc == 0 { return true }
        if errno == EADDRINUSE { return false }
        throw RStreamError.system(errno, "bind(\(name))")
    }

    /// Binds and listens on `name`; false when another listener holds it.
    package static func listen(_ fd: Int32, name: String, backlog: Int) throws(RStreamError) -> Bool {
        guard try bind(fd, name: name) else { return false }
        _ = try systemCall(.unixListen, "listen(\(name))") { Glibc.listen(fd, Int32(clamping: backlog)) }
        return true
    }

    /// The abstract name the peer of connected `fd` is bound to; nil when it has none (or the
    /// call fails: the caller refuses a peer without a name either way).
    package static func peerName(_ fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        let pathLength = Int(length) - MemoryLayout<sa_family_t>.size
        guard rc == 0, pathLength > 1 else { return nil }
        return withUnsafeBytes(of: address.sun_path) { path in
            guard path[0] == 0 else { return nil } // a file name, not an abstract one
            return String(decoding: path[1..<min(pathLength, path.count)], as: UTF8.self)
        }
    }

    package enum Connected {
        case connected
        /// Nothing listens there.
        case nobody
        /// The listener's backlog is full: try again (a TCP client's SYN would be retried too).
        case backlogFull
    }

    /// Connects to the listener named `name` (non-blocking).
    package static func connect(_ fd: Int32, name: String) throws(RStreamError) -> Connected {
        while true {
            let rc = injectedErrno(.unixConnect) ? -1 : withAddress(name: name) { Glibc.connect(fd, $0, $1) }
            if rc == 0 { return .connected }
            switch errno {
            case EINTR: continue
            case ECONNREFUSED, ENOENT: return .nobody
            case EAGAIN: return .backlogFull
            default: throw RStreamError.system(errno, "connect(\(name))")
            }
        }
    }

    /// The next connection waiting on a listening socket (non-blocking), or nil.
    package static func accept(_ fd: Int32) throws(RStreamError) -> Int32? {
        try nonblockingSystemCall(.unixAccept, "accept4(same-host listener)") {
            rs_accept_nonblocking(fd)
        }
    }

    package static func send(_ fd: Int32, _ bytes: [UInt8], descriptors: [Int32] = []) throws(RStreamError) {
        let sent = try systemCall(.sendMessage, "sendmsg(set-up message)") {
            bytes.withUnsafeBytes { raw in
                descriptors.withUnsafeBufferPointer { fds in
                    rs_send_with_descriptors(fd, raw.baseAddress, raw.count, fds.baseAddress, Int32(fds.count))
                }
            }
        }
        guard sent == bytes.count else { throw RStreamError(.system, code: EMSGSIZE, "sendmsg sent \(sent) of \(bytes.count) bytes") }
    }

    /// One message received without waiting.
    package struct Message {
        package var bytes: [UInt8]
        package var descriptors: [Int32]
        /// Bytes or descriptors were cut (more than was room for); the extra descriptors are closed.
        package var truncated: Bool
        /// The peer closed its end (no message).
        package var isEnd: Bool { bytes.isEmpty && descriptors.isEmpty }

        package func closeDescriptors() { for fd in descriptors { close(fd) } }
    }

    /// The next message, or nil when none has arrived (the socket is non-blocking).
    package static func receive(_ fd: Int32, capacity: Int = 512, maxDescriptors: Int = SameHostLayout.descriptorCount) throws(RStreamError) -> Message? {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var descriptors = [Int32](repeating: -1, count: max(maxDescriptors, 1))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let n = try nonblockingSystemCall(.receiveMessage, "recvmsg(set-up message)") {
            bytes.withUnsafeMutableBytes { raw in
                descriptors.withUnsafeMutableBufferPointer { fds in
                    rs_receive_with_descriptors(fd, raw.baseAddress, raw.count, fds.baseAddress, Int32(maxDescriptors), &count, &truncated, 1)
                }
            }
        }
        guard let n else { return nil }
        return Message(bytes: Array(bytes[0..<Int(n)]), descriptors: Array(descriptors[0..<Int(count)]), truncated: truncated != 0)
    }
}
