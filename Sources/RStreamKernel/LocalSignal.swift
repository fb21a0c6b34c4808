import CLibfabric // its header brings sys/eventfd.h, as for `WaitSet`
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A wait set's rings from inside the process (a close from another thread, completions that
/// another thread took), brought to its sleepers without a descriptor of the set's own: a
/// sleeping thread watches with an eventfd lent to it while it sleeps (`SleeperEventfds`), a
/// sleeping task through the reactor, which files it here. So a stream that is slept on holds
/// no eventfd of its own: 10,000 same-host streams slept on hold 10,000 descriptors, not 20,000.
///
/// Latched: a raise is remembered until `clear`, so a raise between a waiter's arming and its
/// watch is seen by the watch, as an eventfd's count would be.
///
/// Invariants: a watcher is listed at most once; a raise takes every watcher (one-shot). A
/// thread's eventfd is written under the lock, so once its `unwatch` has returned nobody writes
/// to it (it may go back to the pool, or be closed). A task's reactor is told after the lock is
/// released: the reactor watches and unwatches under its own lock, which is always taken
/// before this one.
package final class LocalSignal: Sendable {
    private let raised = Atomic<Bool>(false)
    private let watchers = Mutex<[Watcher]>([])

    /// A thread asleep on its lent eventfd, or a task the reactor holds under `token`.
    private struct Watcher {
        let eventfd: Int32
        let reactor: Reactor?
        let token: Reactor.Token
        func isSame(as other: Watcher) -> Bool {
            eventfd == other.eventfd && reactor === other.reactor && token == other.token
        }
    }

    package init() {}

    /// Wakes every watcher, and latches for those to come.
    package func raise() {
        raised.store(true, ordering: .sequentiallyConsistent)
        // The latch first: a watch that takes the lock after this sees it.
        let tasks = watchers.withCheckedLock(key: lockKey(self)) { list -> [Watcher] in
            guard !list.isEmpty else { return [] }
            var tasks: [Watcher] = []
            for watcher in list {
                if watcher.reactor != nil {
                    tasks.append(watcher)
                } else {
                    var one: UInt64 = 1
                    _ = write(watcher.eventfd, &one, 8) // an eventfd: never blocks
                }
            }
            list.removeAll(keepingCapacity: true)
            return tasks
        }
        for task in tasks { task.reactor!.signalled(task.token) }
    }

    /// Forgets the raises so far (an arming made while nobody sleeps: what they were for is
    /// looked at after it).
    package func clear() {
        raised.store(false, ordering: .sequentiallyConsistent)
    }

    package var isRaised: Bool { raised.load(ordering: .sequentiallyConsistent) }

    /// Has the next raise write to `eventfd`; true (and nothing watched) when raised already.
    package func watch(eventfd: Int32) -> Bool {
        watch(Watcher(eventfd: eventfd, reactor: nil, token: 0))
    }

    /// Has the next raise fire `token` of `reactor` (called under the reactor's lock); true (and
    /// nothing watched) when raised already.
    func watch(reactor: Reactor, token: Reactor.Token) -> Bool {
        watch(Watcher(eventfd: -1, reactor: reactor, token: token))
    }

    package func unwatch(eventfd: Int32) {
        unwatch(Watcher(eventfd: eventfd, reactor: nil, token: 0))
    }

    func unwatch(reactor: Reactor, token: Reactor.Token) {
        unwatch(Watcher(eventfd: -1, reactor: reactor, token: token))
    }

    private func watch(_ watcher: Watcher) -> Bool {
        watchers.withCheckedLock(key: lockKey(self)) { list -> Bool in
            if raised.load(ordering: .sequentiallyConsistent) { return true }
            assert(!list.contains { $0.isSame(as: watcher) }, "watched twice")
            list.append(watcher)
            return false
        }
    }

    private func unwatch(_ watcher: Watcher) {
        watchers.withCheckedLock(key: lockKey(self)) { list in
            if let i = list.firstIndex(where: { $0.isSame(as: watcher) }) { list.remove(at: i) }
        }
    }

    /// How many wait now (for tests).
    package var watcherCount: Int { watchers.withCheckedLock(key: lockKey(self)) { $0.count } }
}

/// Eventfds lent to threads for the length of one sleep on a `LocalSignal`: as many as threads
/// have slept at once, made when first needed and kept for the process's life (no thread-exit
/// hook, which would run in `librstream-fi.so` after libfabric unloaded it). A child forked
/// since closes the ones it inherited: the parent's sleepers still use those open files, and
/// the child's drain could take a parent's ring.
package enum SleeperEventfds {
    private struct Pool {
        var owner: pid_t = 0
        var free: [Int32] = []
    }
    private static let pool = Mutex(Pool())
    private final class LockName: Sendable {}
    private static let lockName = LockName()
    /// Eventfds made so far (for tests).
    package static let made = Atomic<Int>(0)

    /// An eventfd with nothing counted in it, or -1 when none can be made (no descriptor left).
    package static func borrow() -> Int32 {
        let lent = pool.withCheckedLock(key: lockKey(lockName)) { pool -> Int32? in
            if case let me = getpid(), pool.owner != me {
                for fd in pool.free { close(fd) }
                pool = Pool(owner: me)
            }
            return pool.free.popLast()
        }
        if let lent {
            var count: UInt64 = 0
            _ = read(lent, &count, 8) // a raise that came after its sleeper woke
            return lent
        }
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        if fd >= 0 { made.add(1, ordering: .relaxed) }
        return fd
    }

    /// Gives back an eventfd that no signal watches any more.
    package static func giveBack(_ fd: Int32) {
        pool.withCheckedLock(key: lockKey(lockName)) { pool in
            if pool.owner == getpid() { pool.free.append(fd) } else { close(fd) }
        }
    }
}
