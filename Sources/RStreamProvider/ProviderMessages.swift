import CLibfabric
import CProviderSupport
import RStreamKernel
#if canImport(Glibc)
import Glibc
#endif

// The socket-endpoint subset of fi_msg (fi_endpoint(3), "SOCKET ENDPOINTS"): every call is
// synchronous and returns the bytes it moved, or -FI_EAGAIN when it could move none now. A
// receive returns 0 at the end of the stream (after the peer's FIN and every byte before it);
// a reset or a protocol error is reported once the bytes that arrived before it have been read
// (a reset after the peer's FIN leaves the end to read, and is reported by sends and fi_close).
extension ProviderEndpoint {
    /// What a data call answers before the connection is made: try again while it is being made.
    @inline(never)
    func notConnected() -> Int {
        pollConnection()
        return isConnecting ? -Int(FI_EAGAIN) : -Int(FI_ENOTCONN)
    }

    /// A C caller's length: a size_t beyond Int.max arrives negative and is refused.
    @inline(__always)
    func send(_ start: UnsafeRawPointer?, _ count: Int) -> Int {
        guard let engine = connectedEngine() else { return notConnected() }
        guard count > 0 else { return count == 0 ? 0 : -Int(FI_EINVAL) }
        guard let start else { return -Int(FI_EINVAL) }
        do throws(RStreamError) {
            let n = try engine.send(UnsafeRawBufferPointer(start: start, count: count))
            return n > 0 ? n : -Int(FI_EAGAIN)
        } catch {
            return Int(returnCode(error))
        }
    }

    @inline(__always)
    func receive(_ start: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        guard let engine = connectedEngine() else { return notConnected() }
        guard count > 0 else { return count == 0 ? 0 : -Int(FI_EINVAL) }
        guard let start else { return -Int(FI_EINVAL) }
        do throws(RStreamError) {
            switch try engine.receive(into: UnsafeMutableRawBufferPointer(start: start, count: count)) {
            case .bytes(let n): return n
            case .wouldBlock: return -Int(FI_EAGAIN)
            case .endOfStream: return 0
            }
        } catch {
            return Int(returnCode(error))
        }
    }

    /// Runs `each` over the vector in order until one moves fewer bytes than its entry holds;
    /// the total moved, or the first entry's answer when it moved none.
    private func vector(_ iov: UnsafePointer<iovec>?, _ count: Int, _ each: (iovec) -> Int) -> Int {
        guard count >= 0, count <= ProviderInfo.iovLimit else { return -Int(FI_EINVAL) }
        guard let iov, count > 0 else { return 0 }
        var total = 0
        for i in 0..<count where iov[i].iov_len != 0 {
            let n = each(iov[i])
            if n < 0 { return total > 0 ? total : n }
            total += n
            if n < iov[i].iov_len { break }
        }
        return total
    }

    func send(vector iov: UnsafePointer<iovec>?, _ count: Int) -> Int {
        vector(iov, count) { send($0.iov_base, $0.iov_len) }
    }

    func receive(vector iov: UnsafePointer<iovec>?, _ count: Int) -> Int {
        vector(iov, count) { receive($0.iov_base, $0.iov_len) }
    }

    /// `fi_sendmsg(FI_PEEK)`: after driving progress, how many bytes a send could take now.
    func peekSend() -> Int {
        guard let engine = connectedEngine() else { return notConnected() }
        engine.progress()
        let n = engine.writableCount
        if n > 0 { return n }
        if let failure = engine.failure { return Int(returnCode(failure)) }
        if engine.isShutdown { return -Int(FI_ESHUTDOWN) }
        // Gone after its FIN: as `fi_send` would answer, not "try again" for ever.
        return engine.peerHasDisconnected ? Int(returnCode(StreamEngine.peerLeftError)) : -Int(FI_EAGAIN)
    }

    /// `fi_recvmsg(FI_PEEK)`: copies readable bytes into the first entry without consuming them
    /// and returns how many (with no entry: how many are readable); 0 at end of stream.
    func peekReceive(_ iov: UnsafePointer<iovec>?, _ count: Int) -> Int {
        guard let engine = connectedEngine() else { return notConnected() }
        guard count >= 0, count <= ProviderInfo.iovLimit, count == 0 || iov != nil else { return -Int(FI_EINVAL) }
        let start = count > 0 ? iov![0].iov_base : nil
        let length = count > 0 ? iov![0].iov_len : 0
        guard length == 0 || (length > 0 && start != nil) else { return -Int(FI_EINVAL) }
        let buffer = UnsafeMutableRawBufferPointer(start: length > 0 ? start : nil, count: length)
        do throws(RStreamError) {
            switch try engine.peek(into: buffer) {
            case .bytes(let n): return n
            case .wouldBlock: return -Int(FI_EAGAIN)
            case .endOfStream: return 0
            }
        } catch {
            return Int(returnCode(error))
        }
    }

    nonisolated(unsafe) static let messageOps = table(fi_ops_msg(
        size: MemoryLayout<fi_ops_msg>.size,
        recv: { ep, buffer, length, _, _, _ in
            owner(ep).receive(buffer, length)
        },
        recvv: { ep, iov, _, count, _, _ in
            owner(ep).receive(vector: iov, count)
        },
        recvmsg: { ep, message, flags in
            guard let message else { return -Int(FI_EINVAL) }
            let me = owner(ep)
            if flags & UInt64(FI_PEEK) != 0 { return me.peekReceive(message.pointee.msg_iov, message.pointee.iov_count) }
            return me.receive(vector: message.pointee.msg_iov, message.pointee.iov_count)
        },
        send: { ep, buffer, length, _, _, _ in
            owner(ep).send(buffer, length)
        },
        sendv: { ep, iov, _, count, _, _ in
            owner(ep).send(vector: iov, count)
        },
        sendmsg: { ep, message, flags in
            let me = owner(ep)
            if flags & UInt64(FI_PEEK) != 0 { return me.peekSend() }
            guard let message else { return -Int(FI_EINVAL) }
            return me.send(vector: message.pointee.msg_iov, message.pointee.iov_count)
        },
        inject: { ep, buffer, length, _ in
            guard length <= EndpointShape.ringSizes.lowerBound else { return -Int(FI_EMSGSIZE) }
            return owner(ep).send(buffer, length)
        },
        senddata: rs_no_msg_senddata,
        injectdata: rs_no_msg_injectdata))
}
