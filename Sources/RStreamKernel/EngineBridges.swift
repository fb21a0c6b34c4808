import CLibfabric

// The bridges between Swift collections and the rings live here, in the kernel, so that the
// public layer never holds a pointer.
//
// The generic bridges are @inlinable so that they specialise for the caller's collection; they call
// the concrete entry points below, which the kernel compiles specialised for `FabricTransport`.
extension StreamEngine where Transport == FabricTransport {
    @usableFromInline
    package func sendContiguous(_ buffer: UnsafeRawBufferPointer) throws(RStreamError) -> Int {
        try send(buffer)
    }

    @usableFromInline
    package func receiveContiguous(_ buffer: UnsafeMutableRawBufferPointer) throws(RStreamError) -> ReceiveOutcome {
        try receive(into: buffer)
    }

    @inlinable
    package func send<Bytes: Collection<UInt8>>(contentsOf bytes: Bytes) throws(RStreamError) -> Int {
        var result: Result<Int, RStreamError>?
        _ = bytes.withContiguousStorageIfAvailable { buffer in
            result = Result { () throws(RStreamError) in try sendContiguous(UnsafeRawBufferPointer(buffer)) }
        }
        if let result { return try result.get() }
        return try sendByElement(bytes)
    }

    @inlinable
    package func receive<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> ReceiveOutcome {
        var result: Result<ReceiveOutcome, RStreamError>?
        _ = buffer.withContiguousMutableStorageIfAvailable { storage in
            result = Result { () throws(RStreamError) in try receiveContiguous(UnsafeMutableRawBufferPointer(storage)) }
        }
        if let result { return try result.get() }
        return try receiveByElement(into: &buffer)
    }
}

extension StreamEngine {
    /// All of `bytes` or none, in one step under the send lock (`sendWhole`).
    package func sendWhole<Bytes: Collection<UInt8>>(contentsOf bytes: Bytes) throws(RStreamError) -> Int {
        var result: Result<Int, RStreamError>?
        _ = bytes.withContiguousStorageIfAvailable { buffer in
            result = Result { () throws(RStreamError) in try sendWhole(UnsafeRawBufferPointer(buffer)) }
        }
        if result == nil {
            result = Array(bytes).withUnsafeBytes { raw in Result { () throws(RStreamError) in try sendWhole(raw) } }
        }
        return try result!.get()
    }

    package func receive(exactlyInto buffer: inout [UInt8]) throws(RStreamError) -> ReceiveOutcome {
        var result: Result<ReceiveOutcome, RStreamError>!
        buffer.withUnsafeMutableBytes { raw in
            result = Result { () throws(RStreamError) in try receive(exactly: raw) }
        }
        return try result.get()
    }

    /// A collection without contiguous storage is copied through the zero-copy path.
    @usableFromInline
    package func sendByElement<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(RStreamError) -> Int {
        return try withWritableBytes { region in
            var n = 0
            for byte in bytes.prefix(region.count) { region[n] = byte; n += 1 }
            return n
        }
    }

    @usableFromInline
    package func receiveByElement<Buffer: MutableCollection<UInt8>>(into buffer: inout Buffer) throws(RStreamError) -> ReceiveOutcome {
        var index = buffer.startIndex
        return try withReadableBytes { region in
            var n = 0
            while n < region.count && index != buffer.endIndex {
                buffer[index] = region[n]
                buffer.formIndex(after: &index)
                n += 1
            }
            return n
        }
    }
}

extension StreamEngine where Transport == FabricTransport {
    /// Reads this endpoint's connection events; a disconnect ends the stream (a reset unless the
    /// peer's FIN came first).
    package func pollConnectionEvents() {
        let event: ConnectionEvent?
        do throws(RStreamError) {
            event = try transport.eventQueue.takeEvent(for: transport.eventKey)
        } catch {
            return
        }
        switch event {
        case .shutdown?, .failed?: peerDidDisconnect()
        case .connected?, nil: break
        }
    }

    /// The last step before sleeping on `transport.waitSet`: drives progress, then, under the
    /// progress lock (where completions are taken), arms the wait set and checks readiness for
    /// `interest` (an empty interest waits for any completion) and `fi_trywait`. True when the
    /// caller may sleep; false when it should look again (or when the core offers no descriptor).
    /// A `sleeper` is counted, and must call `transport.waitSet!.sleep` next.
    package func prepareToWait(for interest: WaitInterest, sleeper: Bool = false) -> Bool {
        guard let waitSet = transport.waitSet else { return false }
        for _ in 0..<8 {
            progress()
            pollConnectionEvents()
            let verdict = withProgressLock { () -> Bool? in
                // Armed before the last look: whatever happens after it rings the wait set.
                waitSet.arm()
                if transport.eventQueue.hasEvent(for: transport.eventKey) { return nil }
                if interest.contains(.readable) && isReadable { return false }
                if interest.contains(.writable) && mayBeWritable { return false }
                guard transport.tryWait() == 0 else { return nil }
                if sleeper { waitSet.willSleep() }
                return true
            }
            if let verdict { return verdict }
        }
        return false
    }

    /// Ends the core connection once this side is done with it.
    package func disconnect() { transport.disconnect() }
}
