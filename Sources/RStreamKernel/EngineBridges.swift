
// The bridges between Swift collections and the rings live here, in the kernel, so that the
// public layer never holds a pointer.
//
// The generic bridges are @inlinable so that they specialise for the caller's collection; they call
// the concrete entry points below.
extension StreamEngine {
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
