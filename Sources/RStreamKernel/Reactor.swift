import CLibfabric // its header brings sys/epoll.h and sys/eventfd.h, as for `WaitSet`
import CSameHost // rs_park_forever
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The process's reactor: one thread that sleeps in `epoll_wait` on the descriptors that async
/// tasks wait on (a stream's or a listener's wait set) and resumes each task when its descriptor
/// becomes readable, or when its deadline comes. It is started by the first async wait; a
/// program that only makes blocking calls never has it, unless it sleeps on a stream that
/// shares its completion queue (`keepPumping`: the reactor then reads the shared queues).
///
/// A descriptor is watched one-shot (`EPOLLONESHOT`) while a task waits on it, and re-armed for
/// the next wait. Arming is level-triggered, so a descriptor that became readable between its
/// owner's last look and the registration fires at once: no wake-up is lost in between.
///
/// A waiter may bring two checks, run on the reactor's thread off its lock. `stillIdle` runs when
/// the descriptor fires (a stream's: drive progress, re-arm, is there still nothing for the
/// task?): while it answers true the task stays suspended and the descriptor is re-armed, so
/// credits or a FIN the task does not wait for cost no task switch. `onTick` runs every
/// `checkEvery` with the waiter left filed (a stream's heartbeat duty of protocol v4: drive
/// progress, is the stream ready now?). A waiter is resumed when a check answers false, at its
/// deadline, or at once when `cancel` takes it.
///
/// Timers are buckets on a 5 ms grid (ticks on a 50 ms one), so a wake-up of the reactor costs
/// what is due then, not a look at every waiter.
///
/// A waiter may also watch a `LocalSignal` (a wait set's rings from inside the process): a raise
/// fires it as its descriptor would, so a stream slept on by a task needs no eventfd of its own.
///
/// Invariants: every pending waiter is either filed (in `waiters`, its token under its
/// descriptors in `byDescriptor`, watching its signal or, once it was raised, in `signalled`,
/// and in the timer bucket of its `checkAt`) or out for its fired check (in `checking`), never
/// both; a waiter is resumed exactly once, by whoever removed it
/// from there under the lock. A cancel that finds its waiter out for its check marks it, and the
/// check's end resumes it. A bucket may name tokens gone since, or filed again at another time:
/// they are skipped, as are tokens in `signalled` that are filed no more. `wakeFD` is in the epoll
/// set for ever. Once `parked` is true the thread
/// runs at most the few instructions to its last wait (see `park` and `stopForExit`).
package final class Reactor: @unchecked Sendable {
    package typealias Token = UInt64

    /// The process's reactor (its thread starts on the first registration).
    package static let shared = Reactor(isShared: true)

    private struct Waiter {
        /// The descriptors it waits on (any of them readable fires it): a wait set's members.
        var fds: [Int32]
        /// Rings from inside the process that fire it too (nil: none).
        let signal: LocalSignal?
        /// Where the descriptors come from, asked again each time the waiter is filed after a
        /// check (a wait set drops an ended socket: filing it again would fire at once, for ever).
        let currentFds: (@Sendable () -> [Int32])?
        /// When the task is resumed whatever the checks say (its wait's deadline).
        let deadline: ContinuousClock.Instant
        /// When the waiter's timer fires next: its next tick, or its deadline.
        var checkAt: ContinuousClock.Instant
        let checkEvery: Duration
        /// Run for every waiter of a fired descriptor before any of their checks (a stream's: it
        /// stops counting as its wait set's sleeper, so that the first check's arming may drain
        /// the set: with each check uncounting only itself, two waiters of one stream kept each
        /// other counted, nobody drained, and the re-armed descriptor fired for ever).
        let awake: (@Sendable () -> Void)?
        let stillIdle: (@Sendable () -> Bool)?
        let onTick: (@Sendable () -> Bool)?
        let resume: @Sendable () -> Void

        /// Resumes the task, taking it off its wait set's sleepers first (`awake`) on this thread:
        /// a resumed task still counted until the pool runs it kept its stream's other waiters
        /// from draining the set.
        var finish: @Sendable () -> Void {
            let awake = awake, resume = resume
            return {
                awake?()
                resume()
            }
        }
    }

    private struct State {
        var waiters: [Token: Waiter] = [:]
        var byDescriptor: [Int32: [Token]] = [:]
        var timers: [ContinuousClock.Instant: [Token]] = [:]
        /// Waiters out for their fired check, and whether a cancel came meanwhile.
        var checking: [Token: Bool] = [:]
        /// Waiters whose signal was raised, for the thread to sort as fired.
        var signalled: [Token] = []
        var nextToken: Token = 1
        /// When the reactor's current sleep ends (nil while it is awake or not started).
        var sleepingUntil: ContinuousClock.Instant?
        var started = false
    }

    private let state = Mutex(State())
    /// The reactor's thread (0 until it runs).
    private let thread = Atomic<UInt>(0)

    /// True on the reactor's own thread: there, a shared queue that the reactor reads
    /// (`keepPumping`) need not be read again by a check, since the reactor reads it whenever
    /// its descriptor fires (each read of tcp's queue drives progress over every endpoint of
    /// the domain: a check per idle stream reading it again cost most of the idle CPU).
    package var isCurrentThread: Bool {
        let mine = thread.load(ordering: .acquiring)
        return mine != 0 && mine == UInt(pthread_self())
    }
    private let epoll: Int32
    private let wakeFD: Int32
    /// Set by `stopForExit`: the thread parks at its next look.
    private let stopping = Atomic<Bool>(false)
    /// Set by the thread once it is parked for good, after `parkedThread` (its kernel id).
    private let parked = Atomic<Bool>(false)
    private let parkedThread = Atomic<Int32>(0)
    /// Set as the process exits: no thread is started after it.
    private static let exiting = Atomic<Bool>(false)
    /// The process that made the thread, from just before it is made (0: none, or making it
    /// failed). A child forked since has no such thread: it has nothing to wait for at exit.
    private let threadProcess = Atomic<Int32>(0)
    /// Whether the shared reactor's thread was ever started (so that `stopForExit` need not
    /// make a reactor to stop).
    private static let everStarted = Atomic<Bool>(false)
    private let isShared: Bool

    /// The process has one (`shared`); tests make their own.
    init(isShared: Bool = false) {
        self.isShared = isShared
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        if epoll >= 0 && wakeFD >= 0 {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.fd = wakeFD
            _ = epoll_ctl(epoll, EPOLL_CTL_ADD, wakeFD, &event)
        }
    }

    // MARK: Registering

    /// Calls `resume` on the reactor's thread once one of `fds` is readable or `signal` is raised,
    /// and `stillIdle` (if given) answers false, `onTick` (run every `checkEvery`) answers false,
    /// or `deadline` passes.
    /// Returns the token that `cancel` takes. Nil when the descriptor cannot be watched (the
    /// reactor could not be made, or `epoll_ctl` refused the descriptor), when its thread cannot
    /// be started, once the exit began, or in a child forked after the thread started: the
    /// caller then naps (and `resume` is never called).
    package func whenReadable(_ fds: [Int32], signal: LocalSignal? = nil, currentFds: (@Sendable () -> [Int32])? = nil,
                              deadline: ContinuousClock.Instant, checkEvery: Duration = .seconds(3600),
                              awake: (@Sendable () -> Void)? = nil, stillIdle: (@Sendable () -> Bool)? = nil,
                              onTick: (@Sendable () -> Bool)? = nil,
                              _ resume: @escaping @Sendable () -> Void) -> Token? {
        guard epoll >= 0, wakeFD >= 0, !fds.isEmpty || signal != nil else { return nil }
        // Not once the exit began, nor in a child forked after the thread started (it has no
        // thread, and the epoll set is the parent's): the caller naps.
        guard !Self.exiting.load(ordering: .sequentiallyConsistent) else { return nil }
        if case let owner = threadProcess.load(ordering: .sequentiallyConsistent), owner != 0, owner != getpid() { return nil }
        var waiter = Waiter(fds: fds, signal: signal, currentFds: currentFds, deadline: deadline, checkAt: deadline, checkEvery: checkEvery,
                            awake: awake, stillIdle: stillIdle, onTick: onTick, resume: resume)
        waiter.checkAt = Self.nextTimer(of: waiter, after: .now)
        let checkAt = waiter.checkAt
        let (token, startThread) = state.withCheckedLock(key: lockKey(self)) { s -> (Token?, Bool) in
            let token = s.nextToken
            guard file(token, waiter, &s) else { return (nil, false) }
            s.nextToken += 1
            let startThread = !s.started
            s.started = true
            return (token, startThread)
        }
        if startThread, let token, !startLoop(registering: token) { return nil }
        if token != nil { wakeIfSleepingPast(checkAt) }
        return token
    }

    /// A raise of the signal that `token` watched (`LocalSignal.raise`, holding no reactor lock;
    /// perhaps an engine's progress lock or a group's, which the reactor never takes under its
    /// own): the thread sorts it as fired at its next look, woken for it if asleep.
    func signalled(_ token: Token) {
        let asleep = state.withCheckedLock(key: lockKey(self)) { s -> Bool in
            s.signalled.append(token)
            return s.sleepingUntil != nil
        }
        if asleep { ring() }
    }

    /// Takes back a waiter not yet resumed and returns its `resume` (the caller runs it), or nil
    /// when the reactor has resumed it already or will (one out for its check is marked, and
    /// resumed when the check ends).
    package func cancel(_ token: Token) -> (@Sendable () -> Void)? {
        state.withCheckedLock(key: lockKey(self)) { s -> (@Sendable () -> Void)? in
            if s.checking[token] != nil {
                s.checking[token] = true
                return nil
            }
            return unfile(token, &s)?.finish
        }
    }

    /// Checks run because a descriptor fired (for tests: a descriptor that stays readable while
    /// its waiters sleep on shows as checks without end).
    package let firedChecks = Atomic<Int>(0)

    /// Waiters resumed by a timer (a tick that found them ready, or their deadline) rather than
    /// by their descriptor (for tests: a waiter that its descriptor should have woken but a tick
    /// found ready shows here).
    package let timerResumes = Atomic<Int>(0)

    /// How many tasks wait now, filed or out for their check (for tests and `rstream async-cost`).
    package var waiting: Int { state.withCheckedLock(key: lockKey(self)) { $0.waiters.count + $0.checking.count } }

    // MARK: Filing (lock held)

    /// Files a waiter: arms each of its descriptors where it is the first; false (nothing filed)
    /// when one cannot be watched.
    private func file(_ token: Token, _ waiter: Waiter, _ s: inout State) -> Bool {
        for (i, fd) in waiter.fds.enumerated() {
            if s.byDescriptor[fd] == nil && !watch(fd) {
                // The ones armed already stay armed with nobody filed: a fire there finds no one.
                for armed in waiter.fds[..<i] { forget(token, under: armed, &s) }
                return false
            }
            s.byDescriptor[fd, default: []].append(token)
        }
        s.waiters[token] = waiter
        s.timers[waiter.checkAt, default: []].append(token)
        // Raised already: fired at the thread's next look (its sleep is cut short: the loop
        // looks at `signalled` before it sleeps, `whenReadable` rings it awake).
        if let signal = waiter.signal, signal.watch(reactor: self, token: token) { s.signalled.append(token) }
        return true
    }

    /// Unfiles a waiter (its timer entry is left, and skipped when it fires).
    private func unfile(_ token: Token, _ s: inout State) -> Waiter? {
        guard let waiter = s.waiters.removeValue(forKey: token) else { return nil }
        for fd in waiter.fds { forget(token, under: fd, &s) }
        waiter.signal?.unwatch(reactor: self, token: token)
        return waiter
    }

    private func forget(_ token: Token, under fd: Int32, _ s: inout State) {
        guard var tokens = s.byDescriptor[fd], let i = tokens.firstIndex(of: token) else { return }
        tokens.remove(at: i)
        s.byDescriptor[fd] = tokens.isEmpty ? nil : tokens
    }

    /// Arms `fd` one-shot for readability: re-armed if the set knows it, else added.
    private func watch(_ fd: Int32) -> Bool {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLONESHOT.rawValue
        event.data.fd = fd
        if epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) == 0 { return true }
        // A descriptor the set does not know, or a number reused since its old file closed.
        return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0
    }

    // MARK: Timers

    private static let grid: Duration = .milliseconds(5)
    private static let tickGrid: Duration = .milliseconds(50)
    private static let epoch = ContinuousClock.now

    private static func onGrid(_ instant: ContinuousClock.Instant, _ step: Duration) -> ContinuousClock.Instant {
        epoch + step * ((instant - epoch) / step).rounded(.up)
    }

    /// The waiter's next timer after `now`: its next tick (on the coarse grid), or its deadline.
    private static func nextTimer(of waiter: Waiter, after now: ContinuousClock.Instant) -> ContinuousClock.Instant {
        let deadline = onGrid(waiter.deadline, grid)
        guard waiter.onTick != nil else { return deadline }
        return min(deadline, onGrid(now + waiter.checkEvery, tickGrid))
    }

    private func wakeIfSleepingPast(_ instant: ContinuousClock.Instant) {
        let wake = state.withCheckedLock(key: lockKey(self)) { s in
            guard let until = s.sleepingUntil else { return false }
            return instant < until || !s.signalled.isEmpty
        }
        if wake { ring() }
    }

    private func ring() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    // MARK: The thread

    /// Starts the thread; false when it cannot be (then every waiter filed so far is resumed to
    /// look again, except `registering`, which is dropped: its caller gets nil and naps; resumed,
    /// it would have looked again at once and tried again, a spin, and a pump would have been
    /// left holding a token of nobody's).
    private func startLoop(registering: Token) -> Bool {
        // Before `everStarted`: a stop that sees it then waits for the thread about to be made.
        threadProcess.store(getpid(), ordering: .sequentiallyConsistent)
        if isShared && !Self.everStarted.exchange(true, ordering: .sequentiallyConsistent) {
            // Before libfabric's destructor (run after every atexit handler) tears the core down;
            // inside `librstream-fi.so` the handler also runs when the library is unloaded.
            atexit { Reactor.stopForExit() }
        }
        let box = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = Self.exiting.load(ordering: .sequentiallyConsistent) ? EAGAIN : pthread_create(&thread, nil, { context in
            let reactor = Unmanaged<Reactor>.fromOpaque(context!).takeRetainedValue()
            reactor.thread.store(UInt(pthread_self()), ordering: .releasing)
            reactor.loop()
            return nil
        }, box)
        guard rc != 0 else {
            pthread_detach(thread)
            return true
        }
        threadProcess.store(0, ordering: .sequentiallyConsistent)
        Unmanaged<Reactor>.fromOpaque(box).release()
        // No thread: the others look again now; the next registration tries to start it again.
        let others = state.withCheckedLock(key: lockKey(self)) { s -> [@Sendable () -> Void] in
            let others = s.waiters.filter { $0.key != registering }.values.map(\.finish)
            for (token, waiter) in s.waiters { waiter.signal?.unwatch(reactor: self, token: token) }
            s = State(nextToken: s.nextToken)
            return others
        }
        for resume in others { resume() }
        return false
    }

    /// What one wake-up of the reactor found to do.
    private struct Work {
        var due: [@Sendable () -> Void] = []
        var fired: [(token: Token, waiter: Waiter)] = []
        var ticks: [(token: Token, tick: @Sendable () -> Bool)] = []
        mutating func clear() {
            due.removeAll(keepingCapacity: true)
            fired.removeAll(keepingCapacity: true)
            ticks.removeAll(keepingCapacity: true)
        }
    }

    /// Sleep until a descriptor fires or a timer comes; sort what is due (under the lock); run the
    /// checks and resume whoever is due (off it); repeat. It runs for the life of the process (a
    /// detached thread, idle in `epoll_wait` once nobody waits).
    private func loop() {
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        var work = Work()
        while true {
            let timeout = state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
                guard s.signalled.isEmpty else {
                    s.sleepingUntil = .now // not to sleep: `wakeIfSleepingPast` may ring once in vain
                    return 0
                }
                guard let next = s.timers.keys.min() else {
                    s.sleepingUntil = .now + .seconds(100 * 365 * 86_400) // for ever: any timer rings it awake
                    return -1
                }
                s.sleepingUntil = next
                let left = next - .now
                return left <= .zero ? 0 : Int32(min(3_600_000, left / .milliseconds(1) + 1))
            }
            if stopping.load(ordering: .acquiring) { park() }
            let n = epoll_wait(epoll, events, Int32(capacity), timeout)
            if stopping.load(ordering: .acquiring) { park() }
            let now = ContinuousClock.now
            state.withCheckedLock(key: lockKey(self)) { s in
                s.sleepingUntil = nil
                for i in 0..<max(0, Int(n)) where events[i].data.fd != wakeFD {
                    sortFired(events[i].data.fd, now: now, &s, &work)
                }
                for token in s.signalled { sortFired(token: token, now: now, &s, &work) }
                s.signalled.removeAll(keepingCapacity: true)
                sortTimers(now: now, &s, &work)
            }
            var drained: UInt64 = 0
            _ = read(wakeFD, &drained, 8)
            runChecks(&work)
            for resume in work.due { resume() }
            work.clear()
        }
    }

    /// Stops the thread for good where it stands between two rounds (holding no lock, in no
    /// check): every signal it can block is blocked, and the thread waits on a futex word nobody
    /// changes. glibc's own SIGSETXID (sent to every thread by
    /// `setuid` and the like) cannot be blocked, but its handler is SA_RESTART: once it returns,
    /// the kernel runs libc's `syscall` instruction again, never this code (a `pause()`
    /// returned, into a library perhaps unloaded by then). glibc ≥ 2.34 installs a SIGCANCEL
    /// handler only for `pthread_cancel`, which nobody calls on this thread.
    private func park() -> Never {
        var all = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_BLOCK, &all, nil)
        parkedThread.store(rs_thread_id(), ordering: .relaxed)
        parked.store(true, ordering: .releasing)
        rs_park_forever()
    }

    /// A fired descriptor is disarmed (one-shot): each of its waiters leaves it, to be resumed or
    /// sent out for its check.
    private func sortFired(_ fd: Int32, now: ContinuousClock.Instant, _ s: inout State, _ work: inout Work) {
        for token in s.byDescriptor.removeValue(forKey: fd) ?? [] { sortFired(token: token, now: now, &s, &work) }
    }

    /// One fired waiter (by a descriptor or its signal), if it is still filed.
    private func sortFired(token: Token, now: ContinuousClock.Instant, _ s: inout State, _ work: inout Work) {
        guard let waiter = unfile(token, &s) else { return } // off its other descriptors too
        if waiter.stillIdle == nil || now >= waiter.deadline {
            work.due.append(waiter.finish)
        } else {
            s.checking[token] = false
            work.fired.append((token, waiter))
        }
    }

    /// The timer buckets that are due: a deadline resumes its waiter, a tick is run in place.
    private func sortTimers(now: ContinuousClock.Instant, _ s: inout State, _ work: inout Work) {
        // The due keys first: the loop files ticks under new keys.
        for key in s.timers.keys.filter({ $0 <= now }) {
            for token in s.timers.removeValue(forKey: key) ?? [] {
                guard var waiter = s.waiters[token], waiter.checkAt == key else { continue }
                if let tick = waiter.onTick, now < waiter.deadline {
                    waiter.checkAt = Self.nextTimer(of: waiter, after: now)
                    s.waiters[token] = waiter
                    s.timers[waiter.checkAt, default: []].append(token)
                    work.ticks.append((token, tick))
                } else if let waiter = unfile(token, &s) {
                    timerResumes.add(1, ordering: .relaxed)
                    work.due.append(waiter.finish)
                }
            }
        }
    }

    /// Runs the checks (off the lock): a fired waiter still idle is filed again (its descriptor
    /// re-armed), a ticked one that is ready is resumed.
    private func runChecks(_ work: inout Work) {
        for (_, waiter) in work.fired { waiter.awake?() }
        firedChecks.add(work.fired.count, ordering: .relaxed)
        for (token, var waiter) in work.fired {
            let idle = waiter.stillIdle!()
            waiter.checkAt = Self.nextTimer(of: waiter, after: .now)
            if let current = waiter.currentFds?() { waiter.fds = current }
            let resume = state.withCheckedLock(key: lockKey(self)) { s -> (@Sendable () -> Void)? in
                let cancelled = s.checking.removeValue(forKey: token) ?? true
                return cancelled || !idle || !file(token, waiter, &s) ? waiter.resume : nil
            }
            if let resume { work.due.append(resume) }
        }
        for (token, tick) in work.ticks where !tick() {
            // Ready: resumed, unless a fire or a cancel took it meanwhile.
            if let waiter = state.withCheckedLock(key: lockKey(self), { s in unfile(token, &s) }) {
                timerResumes.add(1, ordering: .relaxed)
                work.due.append(waiter.finish)
            }
        }
    }
}

extension Reactor {
    /// How long `stopForExit` waits for the thread to leave the check it is in (a check is a
    /// few non-blocking calls; past this the exit goes on rather than hang).
    static let exitWaitLimit: Duration = .milliseconds(250)

    /// Parks the reactor's thread for the rest of the process's life, and returns once it has
    /// left whatever check it was in: called as the process exits (an `atexit` handler) and
    /// from the provider's `cleanup`, before libfabric's destructor cleans up the core (which
    /// the thread may be reading a queue of) and unloads `librstream-fi.so` (whose code the
    /// thread runs: a C program exiting with the reactor busy crashed with SIGSEGV). Tasks
    /// still waiting are never resumed. Threads of the program itself are its own to stop.
    /// A child forked after the thread started has none: it waits for nothing (and has no
    /// reactor either; its async waits nap).
    package static func stopForExit() {
        exiting.store(true, ordering: .sequentiallyConsistent)
        guard everStarted.load(ordering: .sequentiallyConsistent) else { return }
        shared.stop(waitingUpTo: exitWaitLimit)
    }

    /// Sets the thread to park and waits up to `limit` for it to be inside its futex wait (not
    /// when called on the thread itself: it parks on its way back to the loop). The few
    /// instructions from `parked` to the wait are the thread's last in this library: the wait
    /// is seen in `/proc/self/task/<tid>/syscall` (where that cannot be read, or the time ran
    /// out, a millisecond more is given instead).
    func stop(waitingUpTo limit: Duration) {
        stopping.store(true, ordering: .releasing)
        guard !isCurrentThread, threadProcess.load(ordering: .sequentiallyConsistent) == getpid() else { return }
        ring()
        let giveUp = ContinuousClock.now + limit
        while !parked.load(ordering: .acquiring), ContinuousClock.now < giveUp { usleep(100) }
        guard parked.load(ordering: .acquiring) else { return }
        let tid = parkedThread.load(ordering: .relaxed)
        while ContinuousClock.now < giveUp {
            switch rs_thread_waits_on_futex(tid) {
            case 1: return
            case 0: usleep(50)
            default: usleep(1000); return
            }
        }
        usleep(1000)
    }

    /// True once the thread is parked (for tests).
    package var isParked: Bool { parked.load(ordering: .acquiring) }
    /// Whether the parked thread is inside its futex wait (for tests): 1 yes, 0 no, -1 where
    /// `/proc/self/task/<tid>/syscall` cannot be read.
    package var lastWaitSeen: Int32 { isParked ? rs_thread_waits_on_futex(parkedThread.load(ordering: .relaxed)) : 0 }

    /// Suspends the calling task until one of `fds` is readable or `signal` is raised, and
    /// `stillIdle` (run on the reactor's thread then) answers false, `onTick` (every `checkEvery`)
    /// answers false, `deadline` passes, or the task is cancelled (it then returns at once; the
    /// caller looks at `Task.isCancelled`). False when `whenReadable` gives no token (see there): the caller must nap.
    package func sleep(on fds: [Int32], signal: LocalSignal? = nil, currentFds: (@Sendable () -> [Int32])? = nil,
                       until deadline: ContinuousClock.Instant, checkEvery: Duration = .seconds(3600),
                       awake: (@Sendable () -> Void)? = nil, stillIdle: (@Sendable () -> Bool)? = nil,
                       onTick: (@Sendable () -> Bool)? = nil) async -> Bool {
        let pending = PendingToken()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                guard let token = whenReadable(fds, signal: signal, currentFds: currentFds, deadline: deadline, checkEvery: checkEvery, awake: awake, stillIdle: stillIdle,
                                               onTick: onTick, { continuation.resume(returning: true) }) else {
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

extension Reactor {
    /// Runs `pump` on the reactor's thread each time `fd` becomes readable, for as long as it
    /// answers true: the reader of a queue that many streams share, which routes what it reads
    /// to each stream and rings the stream's own descriptor. Returns the token that `cancel`
    /// takes (before `fd` is closed), nil when `whenReadable` gives none (see there).
    /// `ended` runs when the reactor stops running it (it answered false, it was cancelled, or
    /// its descriptor could not be watched again), so that its owner can start it again.
    package func keepPumping(_ fd: Int32, pump: @escaping @Sendable () -> Bool, ended: @escaping @Sendable () -> Void) -> Token? {
        whenReadable([fd], deadline: .now + .seconds(100 * 365 * 86_400), stillIdle: pump, ended)
    }
}
