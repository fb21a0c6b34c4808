import CLibfabric // its header brings sys/epoll.h and sys/eventfd.h, as for `WaitSet`
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The process's reactor: one thread that sleeps in `epoll_wait` on the descriptors that async
/// tasks wait on (a stream's or a listener's wait set) and resumes each task when its descriptor
/// becomes readable, or when its deadline comes. It is started by the first async wait; a
/// program that only makes blocking calls never has it.
///
/// A descriptor is watched one-shot (`EPOLLONESHOT`) while a task waits on it: a readiness
/// resumes every waiter of that descriptor together, and the next wait re-arms it. Arming is
/// level-triggered, so a descriptor that became readable between its owner's last look and the
/// registration fires at once: no wake-up is lost in between. A waiter whose deadline passes is
/// resumed by the reactor's own clock (its loop then drives progress: protocol v4's heartbeat
/// duty), and a cancelled one at once by `cancel`.
///
/// Invariants: every pending waiter is in `state.waiters` exactly once, filed under its
/// descriptor; a waiter leaves it, under the lock, before it is resumed, so it is resumed exactly
/// once, by whoever removed it. `wakeFD` is in the epoll set for ever.
package final class Reactor: @unchecked Sendable {
    package typealias Token = UInt64

    /// The process's reactor (its thread starts on the first registration).
    package static let shared = Reactor()

    private struct Waiter {
        let token: Token
        let deadline: ContinuousClock.Instant
        let resume: @Sendable () -> Void
    }

    private struct State {
        var waiters: [Int32: [Waiter]] = [:]
        var descriptorOf: [Token: Int32] = [:]
        var nextToken: Token = 1
        /// The earliest deadline of any waiter (`.distantFuture`-like when none): the reactor
        /// sleeps no longer than until it.
        var nextDeadline: ContinuousClock.Instant?
        /// When the reactor's current sleep ends (nil while it is awake or not started).
        var sleepingUntil: ContinuousClock.Instant?
        var started = false
    }

    private let state = Mutex(State())
    private let epoll: Int32
    private let wakeFD: Int32

    private init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        if epoll >= 0 && wakeFD >= 0 {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.fd = wakeFD
            _ = epoll_ctl(epoll, EPOLL_CTL_ADD, wakeFD, &event)
        }
    }

    /// Calls `resume` once `fd` is readable or `deadline` passes, on the reactor's thread; returns
    /// the token that `cancel` takes. Nil when the descriptor cannot be watched (the reactor could
    /// not be made, or `epoll_ctl` refused the descriptor): the caller then naps instead.
    package func whenReadable(_ fd: Int32, deadline: ContinuousClock.Instant,
                              _ resume: @escaping @Sendable () -> Void) -> Token? {
        guard epoll >= 0, wakeFD >= 0 else { return nil }
        let (token, startThread, wakeReactor) = state.withCheckedLock(key: lockKey(self)) { s -> (Token?, Bool, Bool) in
            let first = s.waiters[fd] == nil
            if first && !watch(fd) { return (nil, false, false) }
            let token = s.nextToken
            s.nextToken += 1
            s.waiters[fd, default: []].append(Waiter(token: token, deadline: deadline, resume: resume))
            s.descriptorOf[token] = fd
            s.nextDeadline = min(s.nextDeadline ?? deadline, deadline)
            let startThread = !s.started
            s.started = true
            // A sleeping reactor that would wake after this deadline must wake to sleep shorter.
            let wake = s.sleepingUntil.map { deadline < $0 } ?? false
            return (token, startThread, wake)
        }
        if startThread { startLoop() }
        if wakeReactor { ring() }
        return token
    }

    /// Takes back a waiter not yet resumed and returns its `resume` (the caller runs it), or nil
    /// when the reactor has resumed it already or is about to.
    package func cancel(_ token: Token) -> (@Sendable () -> Void)? {
        state.withCheckedLock(key: lockKey(self)) { s -> (@Sendable () -> Void)? in
            guard let fd = s.descriptorOf.removeValue(forKey: token), var list = s.waiters[fd],
                  let i = list.firstIndex(where: { $0.token == token }) else { return nil }
            let waiter = list.remove(at: i)
            s.waiters[fd] = list.isEmpty ? nil : list
            return waiter.resume
        }
    }

    /// How many tasks wait now (for tests).
    package var waiting: Int { state.withCheckedLock(key: lockKey(self)) { $0.descriptorOf.count } }

    /// Arms `fd` one-shot for readability (under the lock): re-armed if the set knows it, else added.
    private func watch(_ fd: Int32) -> Bool {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLONESHOT.rawValue
        event.data.fd = fd
        if epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) == 0 { return true }
        // A descriptor the set does not know, or a number reused since its old file closed.
        return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0
    }

    private func ring() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    private func startLoop() {
        let box = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let reactor = Unmanaged<Reactor>.fromOpaque(context!).takeRetainedValue()
            reactor.loop()
            return nil
        }, box)
        if rc == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<Reactor>.fromOpaque(box).release()
            // No thread: resume everyone now and let them nap; the next registration tries again.
            for resume in takeAll() { resume() }
            state.withCheckedLock(key: lockKey(self)) { $0.started = false }
        }
    }

    private func takeAll() -> [@Sendable () -> Void] {
        state.withCheckedLock(key: lockKey(self)) { s in
            let all = s.waiters.values.flatMap { $0.map(\.resume) }
            s.waiters = [:]
            s.descriptorOf = [:]
            s.nextDeadline = nil
            return all
        }
    }

    /// The reactor thread: sleep until a descriptor fires or the next deadline, resume whoever is
    /// due, repeat. It runs for the life of the process (a detached thread, idle in `epoll_wait`
    /// once nobody waits).
    private func loop() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        var due: [@Sendable () -> Void] = []
        due.reserveCapacity(capacity)
        while true {
            let timeout = state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
                guard let next = s.nextDeadline else {
                    s.sleepingUntil = .now + .seconds(3600)
                    return -1
                }
                s.sleepingUntil = next
                let left = next - .now
                return left <= .zero ? 0 : Int32(min(3_600_000, left / .milliseconds(1) + 1))
            }
            let n = epoll_wait(epoll, events, Int32(capacity), timeout)
            state.withCheckedLock(key: lockKey(self)) { s in
                s.sleepingUntil = nil
                for i in 0..<max(0, Int(n)) {
                    let fd = events[i].data.fd
                    if fd == wakeFD { continue }
                    guard let list = s.waiters.removeValue(forKey: fd) else { continue }
                    for waiter in list {
                        s.descriptorOf[waiter.token] = nil
                        due.append(waiter.resume)
                    }
                }
                let now = ContinuousClock.now
                // A deadline already met by an event makes one early scan, which finds it gone.
                guard let next = s.nextDeadline, next <= now else { return }
                var earliest: ContinuousClock.Instant?
                for (fd, list) in s.waiters {
                    var kept: [Waiter] = []
                    for waiter in list {
                        if waiter.deadline <= now {
                            s.descriptorOf[waiter.token] = nil
                            due.append(waiter.resume)
                        } else {
                            kept.append(waiter)
                            earliest = min(earliest ?? waiter.deadline, waiter.deadline)
                        }
                    }
                    s.waiters[fd] = kept.isEmpty ? nil : kept
                }
                s.nextDeadline = earliest
            }
            var drained: UInt64 = 0
            _ = read(wakeFD, &drained, 8)
            for resume in due { resume() }
            due.removeAll(keepingCapacity: true)
        }
    }
}

extension Reactor {
    /// Suspends the calling task until `fd` is readable, `deadline` passes, or the task is
    /// cancelled (it then returns at once; the caller looks at `Task.isCancelled`). False when
    /// the descriptor cannot be watched: the caller must nap instead.
    package func sleep(on fd: Int32, until deadline: ContinuousClock.Instant) async -> Bool {
        let pending = PendingToken()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                guard let token = whenReadable(fd, deadline: deadline, { continuation.resume(returning: true) }) else {
                    continuation.resume(returning: false)
                    return
                }
                pending.set(token)
                // A cancel that ran before the token was known did nothing: take the waiter back here.
                if Task.isCancelled, let resume = cancel(token) { resume() }
            }
        } onCancel: {
            if let token = pending.token, let resume = cancel(token) { resume() }
        }
    }
}

/// The token of a registration, handed from the registering task to its cancellation handler.
private final class PendingToken: Sendable {
    private let value = Atomic<UInt64>(0)
    func set(_ token: Reactor.Token) { value.store(token, ordering: .releasing) }
    var token: Reactor.Token? {
        let token = value.load(ordering: .acquiring)
        return token == 0 ? nil : token
    }
}
