import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The one way RStream blocks a thread: every blocking call of the Swift API, `wait(for:)`, the
/// listeners' accept, the lingering closes (the façade's and the provider's) and the provider's
/// blocking reads retry their attempt through `run`.
///
/// A round tries the attempt; within the busy-poll window it goes straight to the next round
/// (yielding the core between rounds past `spinBeforeYielding`); past the window the caller
/// sleeps on the wait set if `prepare` (which arms it under the owner's lock) says nothing can
/// arrive unseen, for at most `longestSleep`: a library wait never sleeps through protocol v4's
/// heartbeat duty, since the next attempt drives progress at least that often. Without a wait
/// set it sleeps until the descriptor `readable` names is (a set-up socket's answer), or naps
/// (10 µs, 100 µs after 64 rounds, 1 ms after a few thousand: not a spin, as the peer being
/// waited for may need this core). `interruption` is asked every round and thrown as it is: a
/// `close` from another thread (which also rings the wait set, so a sleeper wakes at once).
package struct BlockingWait {
    package var deadline: ContinuousClock.Instant?
    package var busyWindow: Duration
    package var waitSet: WaitSet?
    /// The longest one sleep lasts (milliseconds), at most `WaitSet.longestSleepMilliseconds`.
    package var longestSleep: Int32
    /// What was waited for, for the `.timedOut` error ("the stream to become ready").
    package var what: String

    package init(deadline: ContinuousClock.Instant?, busyWindow: Duration = .zero, waitSet: WaitSet?,
                 longestSleep: Int32 = WaitSet.longestSleepMilliseconds, what: String) {
        precondition(longestSleep >= 0 && longestSleep <= WaitSet.longestSleepMilliseconds,
                     "a wait sleeps at most \(WaitSet.longestSleepMilliseconds) ms at a time")
        self.deadline = deadline
        self.busyWindow = busyWindow
        self.waitSet = waitSet
        self.longestSleep = longestSleep
        self.what = what
    }

    /// Rounds of `attempt` until it yields a value (returned), `interruption` answers an error, or
    /// the deadline passes (`.timedOut`). `prepare` is asked only where there is a wait set; a
    /// `prepare` that answers true has announced the caller as a sleeper (`WaitSet.willSleep`).
    /// `readable` is asked only where there is none.
    package func run<R>(
        interruption: () -> RStreamError? = { nil },
        prepare: () -> Bool = { false },
        readable: () -> Int32? = { nil },
        attempt: (_ round: Int) throws(RStreamError) -> R?
    ) throws(RStreamError) -> R {
        let start = ContinuousClock.now
        let busyUntil = start + busyWindow
        let yieldAfter = start + Self.spinBeforeYielding
        var round = 0
        var notYet = 0
        while true {
            if let value = try look(round, interruption, attempt) { return value }
            let now = ContinuousClock.now
            round += 1
            guard now >= busyUntil else {
                // Past its first microseconds a busy-poll gives the core to any other thread ready
                // to run (the peer this call waits for may be one); alone on its core it goes on
                // at once. A pure spin held the core to the window's end: two pairs of threads on
                // two cores fell to a third of one pair's round trips (issue 12).
                if now >= yieldAfter { sched_yield() }
                continue
            }
            if let waitSet {
                if prepare() {
                    notYet = 0
                    waitSet.sleep(timeoutMilliseconds: min(longestSleep, WaitSet.milliseconds(until: deadline)))
                } else {
                    // "Ready" that the attempt does not find (a write staged for a full queue, say)
                    // passes within a completion or two: looked at again, but not in a hot loop.
                    notYet += 1
                    if notYet > 16 { usleep(notYet < 1024 ? 10 : 100) }
                }
            } else if let fd = readable() {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, min(longestSleep, WaitSet.milliseconds(until: deadline)))
            } else {
                usleep(round < 64 ? 10 : round < 4096 ? 100 : 1000)
            }
        }
    }
}

extension BlockingWait {
    /// How long a blocking call's busy-poll spins before it yields its core between rounds: a
    /// same-host answer (a fraction of a microsecond) comes within it, so it costs that path no
    /// system call.
    package static let spinBeforeYielding: Duration = .microseconds(5)

    /// One round's look, sync or async: the interruption, the attempt, then the deadline. The
    /// attempt's value, or nil to go on.
    private func look<R>(_ round: Int, _ interruption: () -> RStreamError?,
                         _ attempt: (Int) throws(RStreamError) -> R?) throws(RStreamError) -> R? {
        if let error = interruption() { throw error }
        if let value = try attempt(round) { return value }
        if let deadline, ContinuousClock.now >= deadline {
            throw RStreamError(.timedOut, code: ETIMEDOUT, "timed out waiting for \(what)")
        }
        return nil
    }

    /// How often a task asleep on the reactor has its `onTick` run: protocol v4's heartbeat
    /// interval, so that a beat due after a second of silence goes within two seconds, a check
    /// interval late, which the shortest peer timeout (3 s) allows for. (Every 500 ms cost 1,000
    /// idle readers 1.7 % of a core instead of 0.9 %.)
    package static let idleCheckInterval: Duration = .seconds(1)

    /// `run` for a task: the same rounds, but within the busy-poll window the task yields between
    /// them, and a sleep suspends it on the process's `Reactor` (until the wait set's descriptor,
    /// or the one `readable` names, is readable; at most `longestSleep`) instead of blocking its
    /// thread. With neither, it naps with `Task.sleep` (20 µs growing to 5 ms, or to 20 ms when
    /// the reactor refused the wait set's descriptor). Cancelling the
    /// task ends the wait with `CancellationError` at the next round; a sleeping task is resumed
    /// at once to see it. Nothing is taken from the stream by a wait: bytes are only taken by an
    /// attempt that returns them.
    ///
    /// `stillIdle`, where given, is `prepare` as the reactor's thread may run it when the
    /// descriptor fires: while it answers true (the caller was counted as a sleeper again) the
    /// task sleeps on, so a heartbeat or credits from the peer cost no task switch. `onTick` runs
    /// there every `idleCheckInterval` (this side's heartbeat duty: drive progress, say whether
    /// the stream became ready). With them, the sleep lasts until the deadline, not `longestSleep`.
    /// `watching members`: the reactor watches the wait set's descriptors one by one rather than
    /// the set (a stream's: the nested set held about a hundred tcp streams, its members several
    /// hundred), reading them again each time it files the task after a check (a same-host set
    /// drops its ended sockets), and the set's `localSignal` for rings from inside the process
    /// (so the set needs no eventfd); not a listener's, whose members come and go with each
    /// request.
    package func runAsync<R>(
        interruption: () -> RStreamError? = { nil },
        prepare: () -> Bool = { false },
        stillIdle: (@Sendable () -> Bool)? = nil,
        onTick: (@Sendable () -> Bool)? = nil,
        watching members: Bool = false,
        readable: () -> Int32? = { nil },
        attempt: (_ round: Int) throws(RStreamError) -> R?
    ) async throws -> R {
        let busyUntil = ContinuousClock.now + busyWindow
        var round = 0
        var notYet = 0
        while true {
            try Task.checkCancellation()
            if let value = try look(round, interruption, attempt) { return value }
            let now = ContinuousClock.now
            round += 1
            if now < busyUntil {
                await Task.yield()
                continue
            }
            let far = deadline ?? now + .seconds(3600)
            var slept = false
            if let waitSet {
                guard prepare() else {
                    // Ready, or not yet able to sleep: look again, letting the pool's other tasks
                    // run (and napping if it lasts, as `run` does).
                    notYet += 1
                    if notYet > 16 { try await Task.sleep(for: .microseconds(notYet < 1024 ? 10 : 100)) } else { await Task.yield() }
                    continue
                }
                notYet = 0
                let counted = SleeperCount()
                // The reactor stops counting the task as a sleeper (for every waiter of the fired
                // descriptor first), then the check re-counts it if it sleeps on.
                let uncount: @Sendable () -> Void = {
                    waitSet.endSleep()
                    counted.set(false)
                }
                let awake = stillIdle == nil ? nil : uncount
                let recheck = stillIdle.map { check in
                    { @Sendable () -> Bool in
                        let idle = check()
                        counted.set(idle)
                        return idle
                    }
                }
                let wakeBy = recheck == nil ? min(now + .milliseconds(Int(longestSleep)), far) : far
                let current: @Sendable () -> [Int32] = { waitSet.members }
                slept = await Reactor.shared.sleep(on: members ? waitSet.members : [waitSet.descriptor],
                                                   signal: members && !waitSet.isFlat ? waitSet.localSignal : nil,
                                                   currentFds: members ? current : nil, until: wakeBy,
                                                   checkEvery: Self.idleCheckInterval,
                                                   awake: awake, stillIdle: recheck, onTick: onTick)
                if counted.isCounted { waitSet.endSleep() }
            } else if let fd = readable() {
                slept = await Reactor.shared.sleep(on: [fd], until: min(now + .milliseconds(Int(longestSleep)), far))
            }
            // A nap instead: 20 µs growing to 5 ms; to 20 ms for a descriptor the reactor refused
            // (over tcp past about 100 streams: a thousand such idle tasks at 5 ms cost a core).
            if !slept {
                let cap = waitSet == nil ? 5000 : 20_000
                try await Task.sleep(for: .microseconds(min(cap, 20 << min(round / 64, 10))))
            }
        }
    }
}

/// Whether a task asleep on the reactor is still counted as its wait set's sleeper (its checks,
/// on the reactor's thread, change that; the task reads it once resumed).
private final class SleeperCount: Sendable {
    private let counted = Atomic<Bool>(true)
    func set(_ value: Bool) { counted.store(value, ordering: .releasing) }
    var isCounted: Bool { counted.load(ordering: .acquiring) }
}
