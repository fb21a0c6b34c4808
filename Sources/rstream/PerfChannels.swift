import RStream
import RStreamKernel
#if canImport(Glibc)
import Glibc
#endif

/// One connection `rstream perf` measures: whole messages each way, busy-polled.
protocol PerfChannel: ~Copyable {
    mutating func send(_ size: Int) throws
    mutating func receive(_ size: Int) throws
    /// The 16-byte test header: what the server does next. Nil at end of stream.
    mutating func sendHeader(_ header: PerfHeader) throws
    mutating func receiveHeader() throws -> PerfHeader?
    /// A whole message each way through the blocking calls (they sleep after their busy-poll
    /// window): the threads test's, where more threads than cores spin otherwise.
    mutating func sendBlocking(_ size: Int) throws
    mutating func receiveBlocking(_ size: Int) throws
    /// A whole message each way through the zero-copy calls where the channel has them: the bytes
    /// are claimed where they lie in the rings, never copied (what the protocol costs without the
    /// two copies; a producer would write its bytes into the region it is handed).
    mutating func sendInPlace(_ size: Int) throws
    mutating func receiveInPlace(_ size: Int) throws
}

extension PerfChannel where Self: ~Copyable {
    mutating func sendBlocking(_ size: Int) throws { try send(size) }
    mutating func receiveBlocking(_ size: Int) throws { try receive(size) }
    mutating func sendInPlace(_ size: Int) throws { try send(size) }
    mutating func receiveInPlace(_ size: Int) throws { try receive(size) }
}

struct PerfHeader: Equatable {
    enum Mode: UInt32 { case echo = 1, sink = 2, scale = 3, echoBlocking = 4, echoInPlace = 5, sinkInPlace = 6 }
    var mode: Mode
    var size: Int
    var count: Int

    var words: [UInt32] { [mode.rawValue, UInt32(size), UInt32(count)] }
    init(mode: Mode, size: Int, count: Int) { self.mode = mode; self.size = size; self.count = count }
    init?(words: [UInt32]) {
        guard words.count == 3, let mode = Mode(rawValue: words[0]) else { return nil }
        self.init(mode: mode, size: Int(words[1]), count: Int(words[2]))
    }
    var bytes: [UInt8] { words.flatMap { w in (0..<4).map { UInt8(truncatingIfNeeded: w >> ($0 * 8)) } } }
    init?(bytes: [UInt8]) {
        guard bytes.count == 12 else { return nil }
        self.init(words: (0..<3).map { i in (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[i * 4 + $1]) << ($1 * 8) } })
    }
}

struct PerfError: Error, CustomStringConvertible {
    var description: String
}

/// An RStream connection, through the copying API (the protocol's copies), busy-polled. The
/// buffer is handed over as one contiguous region per call, as a caller with its own buffer
/// would (an `ArraySlice` of a shared array would be copied on write).
struct StreamChannel: PerfChannel {
    let stream: StreamConnection
    let buffer: UnsafeMutableRawBufferPointer

    init(_ stream: StreamConnection, maxMessage: Int) {
        self.stream = stream
        buffer = .allocate(byteCount: max(maxMessage, 16), alignment: 64)
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5A)
    }

    func send(_ size: Int) throws {
        var sent = 0
        while sent < size {
            if case .sent(let n) = try stream.trySend(UnsafeRawBufferPointer(rebasing: buffer[sent..<size])) { sent += n }
        }
    }

    func receive(_ size: Int) throws {
        var received = 0
        while received < size {
            var region = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, size - received)])
            switch try stream.tryReceive(into: &region) {
            case .received(let n): received += n
            case .wouldBlock: continue
            case .endOfStream: throw PerfError(description: "end of stream inside a message")
            }
        }
    }

    func sendInPlace(_ size: Int) throws {
        var sent = 0
        while sent < size {
            let wanted = size - sent
            if case .sent(let n) = try stream.withSendBuffer({ region in min(region.count, wanted) }) { sent += n }
        }
    }

    func receiveInPlace(_ size: Int) throws {
        var received = 0
        while received < size {
            let wanted = size - received
            switch try stream.withReceivedBytes({ bytes in min(bytes.count, wanted) }) {
            case .received(let n): received += n
            case .wouldBlock: continue
            case .endOfStream: throw PerfError(description: "end of stream inside a message")
            }
        }
    }

    func sendHeader(_ header: PerfHeader) throws { try stream.sendAll(header.bytes) }

    func sendBlocking(_ size: Int) throws {
        try stream.sendAll(UnsafeRawBufferPointer(rebasing: buffer[0..<size]))
    }

    func receiveBlocking(_ size: Int) throws {
        var received = 0
        while received < size {
            var region = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, size - received)])
            let n = try stream.receive(into: &region)
            guard n > 0 else { throw PerfError(description: "end of stream inside a message") }
            received += n
        }
    }

    func receiveHeader() throws -> PerfHeader? {
        var bytes = [UInt8](repeating: 0, count: 12)
        var received = 0
        while received < 12 {
            switch try stream.tryReceive(into: &bytes[received..<12]) {
            case .received(let n): received += n
            case .wouldBlock: continue
            case .endOfStream: return nil
            }
        }
        return PerfHeader(bytes: bytes)
    }
}

/// The raw core: writedata of whole messages, no rings or credits.
struct CoreChannel: ~Copyable, PerfChannel {
    var core: CoreBaseline
    let window: Int

    mutating func send(_ size: Int) throws { try core.sendMessage(size: size, window: window) }
    mutating func receive(_ size: Int) throws { try core.receiveMessage(size: size) }
    mutating func sendHeader(_ header: PerfHeader) throws { for word in header.words { try core.sendWord(word) } }
    mutating func receiveHeader() throws -> PerfHeader? {
        PerfHeader(words: [try core.receiveWord(), try core.receiveWord(), try core.receiveWord()])
    }
}

/// Kernel TCP with TCP_NODELAY: blocking calls, or a non-blocking socket busy-polled.
/// (A baseline, not part of RStream: plain POSIX sockets.)
struct TCPChannel: PerfChannel {
    let fd: Int32
    let busyPoll: Bool
    var buffer: [UInt8]

    init(fd: Int32, busyPoll: Bool, maxMessage: Int) {
        self.fd = fd
        self.busyPoll = busyPoll
        buffer = [UInt8](repeating: 0x5A, count: max(maxMessage, 16))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, busyPoll ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
    }

    private static func transfer(_ fd: Int32, _ size: Int, into: Bool, _ bytes: UnsafeMutableRawBufferPointer) throws -> Bool {
        var done = 0
        while done < size {
            let n = into ? read(fd, bytes.baseAddress! + done, size - done) : write(fd, bytes.baseAddress! + done, size - done)
            if n > 0 { done += n; continue }
            if n == 0 && into { if done == 0 { return false }; throw PerfError(description: "TCP peer closed mid-message") }
            if errno == EAGAIN || errno == EINTR { continue }
            throw PerfError(description: "TCP \(into ? "read" : "write") failed: errno \(errno)")
        }
        return true
    }

    mutating func send(_ size: Int) throws {
        let fd = fd
        var left = size
        while left > 0 {
            let n = min(left, buffer.count)
            _ = try buffer.withUnsafeMutableBytes { try Self.transfer(fd, n, into: false, $0) }
            left -= n
        }
    }

    mutating func receive(_ size: Int) throws {
        let fd = fd
        var left = size
        while left > 0 {
            let n = min(left, buffer.count)
            guard try buffer.withUnsafeMutableBytes({ try Self.transfer(fd, n, into: true, $0) }) else {
                throw PerfError(description: "TCP peer closed")
            }
            left -= n
        }
    }

    mutating func sendHeader(_ header: PerfHeader) throws {
        var bytes = header.bytes
        _ = try bytes.withUnsafeMutableBytes { try Self.transfer(fd, 12, into: false, $0) }
    }

    mutating func receiveHeader() throws -> PerfHeader? {
        var bytes = [UInt8](repeating: 0, count: 12)
        guard try bytes.withUnsafeMutableBytes({ try Self.transfer(fd, 12, into: true, $0) }) else { return nil }
        return PerfHeader(bytes: bytes)
    }
}

enum TCPSocket {
    static func listen(host: String, port: UInt16) throws -> (fd: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 64) == 0 else { throw PerfError(description: "TCP listen on \(host):\(port): errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    static func connect(host: String, port: UInt16) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            throw PerfError(description: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, 0)
        guard Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            throw PerfError(description: "TCP connect to \(host):\(port): errno \(errno)")
        }
        return fd
    }
}

/// What a server does with one connection: obey headers until end of stream.
func serve(_ channel: inout some PerfChannel & ~Copyable) throws {
    while let header = try channel.receiveHeader() {
        switch header.mode {
        case .echo:
            for _ in 0..<header.count {
                try channel.receive(header.size)
                try channel.send(header.size)
            }
        case .echoBlocking:
            for _ in 0..<header.count {
                try channel.receiveBlocking(header.size)
                try channel.sendBlocking(header.size)
            }
        case .echoInPlace:
            for _ in 0..<header.count {
                try channel.receiveInPlace(header.size)
                try channel.sendInPlace(header.size)
            }
        case .sink:
            for _ in 0..<header.count { try channel.receive(header.size) }
            try channel.send(1)
        case .sinkInPlace:
            for _ in 0..<header.count { try channel.receiveInPlace(header.size) }
            try channel.send(1)
        case .scale:
            throw PerfError(description: "scale headers go to the scale port")
        }
    }
}
