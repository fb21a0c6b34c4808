import CLibfabric
import RStreamKernel
import CProviderSupport

/// The memory of an object handed to C: the libfabric handle struct (which begins with
/// `struct fid`) preceded, in the same allocation, by an unmanaged reference to its Swift owner
/// and a tag that says the reference is live.
///
/// Invariant: `attach` retains the owner once, before the handle is given to C, and `free`
/// releases it once; between the two the block is valid, tagged, and its owner alive, so a handle
/// a C caller holds leads to a live owner until it is closed. Debug builds check the tag on every
/// lookup (a handle never attached, or already freed, traps). Every handle this provider gives
/// out comes from here.
enum CHandle {
    private static let header = 16
    private static let liveTag: UInt64 = 0x7273_7472_6561_6d21 // "rstream!"

    /// A zeroed block for a `Handle`, without an owner yet (an owner's init allocates its handle
    /// before it may pass `self`).
    static func allocate<Handle>(_: Handle.Type) -> UnsafeMutablePointer<Handle> {
        let size = header + MemoryLayout<Handle>.size
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        return (raw + header).bindMemory(to: Handle.self, capacity: 1)
    }

    static func attach<Handle>(_ owner: AnyObject, to handle: UnsafeMutablePointer<Handle>) {
        let slot = UnsafeMutableRawPointer(handle) - header
        assert(slot.load(fromByteOffset: 8, as: UInt64.self) == 0, "a handle is attached once")
        slot.storeBytes(of: UnsafeRawPointer(Unmanaged.passRetained(owner).toOpaque()), as: UnsafeRawPointer.self)
        slot.storeBytes(of: liveTag, toByteOffset: 8, as: UInt64.self)
    }

    @inline(__always)
    static func owner<Owner: AnyObject>(of handle: UnsafeRawPointer, as _: Owner.Type = Owner.self) -> Owner {
        assert((handle - header).load(fromByteOffset: 8, as: UInt64.self) == liveTag, "not a live rstream handle")
        return Unmanaged<Owner>.fromOpaque((handle - header).load(as: UnsafeRawPointer.self)).takeUnretainedValue()
    }

    /// Releases the owner and frees the block; the handle is dead from here on.
    static func free(_ handle: UnsafeRawPointer) {
        let raw = UnsafeMutableRawPointer(mutating: handle - header)
        assert(raw.load(fromByteOffset: 8, as: UInt64.self) == liveTag, "a handle is freed once")
        raw.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
        Unmanaged<AnyObject>.fromOpaque(raw.load(as: UnsafeRawPointer.self)).release()
        raw.deallocate()
    }

    /// True when `object` is a handle of this provider with the given operations table (how a
    /// handle another provider made is told apart from ours).
    static func isOurs(_ object: UnsafeMutablePointer<fid>?, ops: UnsafeMutablePointer<fi_ops>) -> Bool {
        object?.pointee.ops == ops
    }
}

/// Makes an operations table that lives for the process.
func table<T>(_ value: T) -> UnsafeMutablePointer<T> {
    let pointer = UnsafeMutablePointer<T>.allocate(capacity: 1)
    pointer.initialize(to: value)
    return pointer
}

/// The libfabric return value for an error: a negative `FI_E*` code.
func returnCode(_ error: RStreamError) -> Int32 {
    -(error.code != 0 ? error.code : Int32(FI_EOTHER))
}
