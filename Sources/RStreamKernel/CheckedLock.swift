import Synchronization
#if RSTREAM_TSAN
import CFabricShim
#endif

extension Mutex where Value: ~Copyable {
    /// `withLock`, with its happens-before edges announced to ThreadSanitizer in TSan builds
    /// (`-DRSTREAM_TSAN`): TSan does not see `Synchronization.Mutex` on Linux (Swift 6.3.1; a
    /// correctly locked counter is reported as a race), so without this every locked region
    /// would be a false report. `key` names the lock: the address of the object that owns it.
    @inline(__always)
    package borrowing func withCheckedLock<Result, E: Error>(
        key: UnsafeRawPointer, _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try withLock { (value: inout sending Value) throws(E) -> sending Result in
            #if RSTREAM_TSAN
            rs_tsan_acquire(key)
            defer { rs_tsan_release(key) }
            #endif
            return try body(&value)
        }
    }
}

/// The address that names an object's lock for `withCheckedLock`.
@inline(__always)
package func lockKey(_ owner: AnyObject) -> UnsafeRawPointer {
    UnsafeRawPointer(Unmanaged.passUnretained(owner).toOpaque())
}

extension Mutex where Value: ~Copyable {
    /// `withLockIfAvailable`, announced to ThreadSanitizer like `withCheckedLock`.
    @inline(__always)
    package borrowing func withCheckedLockIfAvailable<Result, E: Error>(
        key: UnsafeRawPointer, _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result? {
        try withLockIfAvailable { (value: inout sending Value) throws(E) -> sending Result in
            #if RSTREAM_TSAN
            rs_tsan_acquire(key)
            defer { rs_tsan_release(key) }
            #endif
            return try body(&value)
        }
    }
}
