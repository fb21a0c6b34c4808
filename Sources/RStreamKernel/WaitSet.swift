import CLibfabric
import CSameHost
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a waiter waits for.
public struct WaitInterest: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Bytes, end of stream or an error to report.
    public static let readable = WaitInterest(rawValue: 1)
    /// Room to send, or an error to report.
    public static let writable = WaitInterest(rawValue: 2)
    /// Any word from the peer, a heartbeat too: what a caller sleeping on the descriptor without a
    /// timeout asks for, so that the peer's heartbeats wake it to drive progress (and send its own).
    package static let everyWord = WaitInterest(rawValue: 4)
    /// What a descriptor handed to the user is armed for: anything.
    package static let anything: WaitInterest = [.readable, .writable, .everyWord]
}

/// Owner of what a stream's waiters sleep on. Either *members*: the completion queue's and event
/// queue's wait descriptors (a same-host stream's set-up socket), and, once a caller asks for one
/// descriptor, a private eventfd, gathered with them in an epoll set; or, for a stream
/// whose completion queue is shared with many others (`CompletionGroup`), *flat*: the private
/// eventfd alone, made when first needed; the reactor reads the shared queue for every stream
/// and rings the eventfds (so that one epoll holds ten thousand such descriptors: a nested
/// set counts against the kernel's limit on wake-up paths through shared descriptors, about a
/// hundred tcp streams per epoll; and so that an idle sleeper does not wake, or fail its
/// `fi_trywait`, for every completion of its neighbours).
///
/// A completion-queue wakeup is not stream readiness (rsockets' poll hung on exactly that): another
/// thread may take the completion, and clear the queue's signal, before a sleeper wakes. So a
/// waiter *arms* the set under the progress lock before its last readiness check, and whoever takes
/// completions while it is armed rings the set (its `localSignal`, and its eventfd once made).
/// Both are cleared only by an arming made while no counted sleeper is asleep: draining them
/// under a sleeper makes that sleeper's `poll` re-check, find nothing, and sleep on (a lost
/// wake-up this type's tests caught).
///
/// A stream's own set (`init(ownMembers:)`) makes its eventfd and its epoll set only for a caller
/// that asks for one descriptor: its library sleeps poll the members, and the reactor watches
/// them one by one, and both are rung from inside the process through `localSignal` (a thread
/// with an eventfd lent for its sleep, a task through the reactor), so a stream that nobody polls
/// from outside holds neither, however it is slept on. A set that others `watch`
/// descriptors into (an event queue of the provider, a listener) gathers them at once: their
/// owners may close them without an `unwatch` (a C program closing an endpoint), which an epoll
/// set forgets by itself and a list of descriptors would not.
///
/// Invariants: the descriptors are open until deinit (the eventfd and the epoll set from when
/// they are made); a set of members holds its eventfd as a member from when it is made; the
/// epoll set, once made, holds every member, with its events (members, eventfd and epoll set
/// change together under `memberList`'s lock);
/// `armed` is set under the engine's progress lock (a listener's accept lock) and cleared by
/// whoever rings: the thread taking completions under that lock, or, for a flat set, the shared
/// queue's reader under the group's lock, ordered against the arming by `CompletionInbox`'s
/// fences; `sleepers` is raised under that lock,
/// before it is released, by a thread about to sleep, and lowered by that thread when it wakes. The
/// eventfd of a flat set is made before its first arming, so whoever finds the set armed finds
/// the eventfd; every ring raises `localSignal`, and writes the eventfd once it is made.
package final class WaitSet: @unchecked Sendable {
    /// The epoll set of the members, made when first asked for (-1 until then, and always for a
    /// flat set).
    private let epollFD = Atomic<Int32>(-1)
    package let isFlat: Bool
    /// The private eventfd (-1 until a flat set first needs it, or a caller asks for the one
    /// `descriptor` of a set of members).
    private let wake = Atomic<Int32>(-1)
    /// What has the reactor read a flat set's shared queues (once), and says whether it does.
    private let startSharedReaders: (@Sendable () -> Bool)?
    /// A same-host stream's set-up socket, on which the peer rings: in the set, its rings drained
    /// with the eventfd (-1: none). Never an eventfd the peer holds too: it could clear its
    /// O_NONBLOCK (a flag of the shared open file) and make our next read or write block.
    private let doorbellFD: Int32
    /// A periodic timer in the set, for objects whose core signals nothing: a sleeper then
    /// wakes every tick and looks. -1 when there is none.
    private let tickFD = Atomic<Int32>(-1)
    /// The interests armed since the last ring (`WaitInterest` bits; 0: nobody is armed).
    private let armed = Atomic<UInt8>(0)
    private let sleepers = Atomic<Int>(0)
    /// What rings the set's sleepers that sleep without its eventfd.
    package let localSignal = LocalSignal()
    /// The descriptors in the set now, each with the events it is watched for (`EPOLLIN`, or
    /// `EPOLLRDHUP` alone), for a library sleep and for a waiter that watches them one by one (the
    /// reactor: holding the set itself nests one epoll in another, which the kernel limits per
    /// shared descriptor, to about a hundred tcp streams; holding the members, to several hundred).
    private let memberList: Mutex<Members>
    private struct Member {
        let fd: Int32
        var events: UInt32
    }
    /// The members as two arrays, so that `members` hands the reactor the descriptors without
    /// copying them (a copy-on-write share, not an allocation per filing).
    private struct Members {
        private(set) var fds: [Int32] = []
        private(set) var events: [UInt32] = []
        var count: Int { fds.count }
        subscript(i: Int) -> Member { Member(fd: fds[i], events: events[i]) }
        mutating func set(_ member: Member) {
            if let i = fds.firstIndex(of: member.fd) { events[i] = member.events } else {
                fds.append(member.fd)
                events.append(member.events)
            }
        }
        mutating func remove(_ fd: Int32) {
            guard let i = fds.firstIndex(of: fd) else { return }
            fds.remove(at: i)
            events.remove(at: i)
        }
    }

    /// One descriptor a caller can sleep on: the epoll set of the members (made now if need be,
    /// with the eventfd),
    /// or a flat set's eventfd (made now if need be; the shared queues are then read by the
    /// reactor, since whoever sleeps on this alone does not read them). -1 when it cannot be had
    /// (no descriptor left, or no reactor).
    package var descriptor: Int32 {
        guard isFlat else { return epollDescriptor }
        return sharedReadersRun ? wakeDescriptor : -1
    }

    /// The members' epoll set, made at the first call.
    private var epollDescriptor: Int32 {
        if case let fd = epollFD.load(ordering: .acquiring), fd >= 0 { return fd }
        guard wakeDescriptor >= 0 else { return -1 } // a member, which local rings must reach
        return memberList.withCheckedLock(key: lockKey(self)) { members -> Int32 in
            if case let fd = epollFD.load(ordering: .acquiring), fd >= 0 { return fd }
            let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
            guard epoll >= 0 else { return -1 }
            for i in 0..<members.count where !Self.control(epoll, EPOLL_CTL_ADD, members[i]) {
                close(epoll)
                return -1
            }
            epollFD.store(epoll, ordering: .releasing)
            return epoll
        }
    }

    private static func control(_ epoll: Int32, _ operation: Int32, _ member: Member) -> Bool {
        var event = epoll_event()
        event.events = member.events
        event.data.fd = member.fd
        return epoll_ctl(epoll, operation, member.fd, &event) == 0
    }

    /// True when a flat set's shared queues are read by the reactor (started now if need be):
    /// only then may anyone sleep on its eventfd. Always true for a set of its own queues.
    private var sharedReadersRun: Bool { startSharedReaders?() ?? true }

    /// The private eventfd, made now if need be (-1 when it cannot be: no descriptor left). A
    /// set of members takes it in as a member (and into its epoll set, if made) before anyone
    /// sees it, counting in it a ring that came before (a waiter may have armed before it was
    /// made, and sleep on the epoll set). Tests use it as an eventfd to offer a hostile peer's
    /// listener.
    package var wakeDescriptor: Int32 {
        let fd = wake.load(ordering: .acquiring)
        if fd >= 0 { return fd }
        guard !isFlat else {
            let made = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard made >= 0 else { return -1 }
            let (exchanged, current) = wake.compareExchange(expected: -1, desired: made, ordering: .sequentiallyConsistent)
            if !exchanged { close(made) }
            return exchanged ? made : current
        }
        return memberList.withCheckedLock(key: lockKey(self)) { members -> Int32 in
            if case let fd = wake.load(ordering: .acquiring), fd >= 0 { return fd }
            let made = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard made >= 0 else { return -1 }
            let member = Member(fd: made, events: EPOLLIN.rawValue)
            if case let epoll = epollFD.load(ordering: .relaxed), epoll >= 0, !Self.control(epoll, EPOLL_CTL_ADD, member) {
                close(made)
                return -1
            }
            members.set(member)
            // Sequentially consistent, as `ring`'s raise and load: either the ring finds the
            // eventfd and writes it, or this sees the latch it raised and counts it here (a
            // waiter armed before the eventfd existed, then sleeping on the epoll set, would
            // otherwise miss it; a stale latch costs one spurious wake-up).
            wake.store(made, ordering: .sequentiallyConsistent)
            if localSignal.isRaised {
                var one: UInt64 = 1
                _ = write(made, &one, 8)
            }
            return made
        }
    }

    /// What the reactor files a waiter under: the members, or a flat set's eventfd alone.
    package var members: [Int32] {
        guard isFlat else { return memberList.withCheckedLock(key: lockKey(self)) { $0.fds } }
        let fd = descriptor
        return fd >= 0 ? [fd] : []
    }

    /// True once the private eventfd is made (for tests).
    package var hasOwnEventfd: Bool { wake.load(ordering: .acquiring) >= 0 }

    /// True once the epoll set is made (for tests).
    package var hasEpollSet: Bool { epollFD.load(ordering: .acquiring) >= 0 }

    /// A set that others watch descriptors into (an event queue, a listener): its eventfd and
    /// epoll set are made now; nil when they cannot be.
    package convenience init?(waitDescriptors: [Int32]) {
        self.init(members: waitDescriptors, doorbell: -1)
        if epollDescriptor < 0 { return nil } // what was made is closed by deinit
    }

    /// A stream's own set: its eventfd and epoll set are made at the first `descriptor`; until
    /// then library sleeps poll the members with a lent eventfd and tasks sleep on the reactor,
    /// both rung through `localSignal`, so a stream that nobody polls from outside holds
    /// neither. `doorbell`: a same-host stream's set-up socket.
    package convenience init(ownMembers waitDescriptors: [Int32], doorbell: Int32 = -1) {
        self.init(members: waitDescriptors, doorbell: doorbell)
    }

    private init(members fds: [Int32], doorbell: Int32) {
        isFlat = false
        startSharedReaders = nil
        doorbellFD = doorbell
        var members = Members()
        for fd in fds + (doorbell >= 0 ? [doorbell] : []) { members.set(Member(fd: fd, events: EPOLLIN.rawValue)) }
        memberList = Mutex(members)
    }

    /// A flat set of a stream whose queues are shared; `startSharedReaders` has the reactor read
    /// them (the first time anyone sleeps on this set) and says whether it does.
    package init(flatStartingReaders startSharedReaders: @escaping @Sendable () -> Bool) {
        isFlat = true
        self.startSharedReaders = startSharedReaders
        doorbellFD = -1
        memberList = Mutex(Members())
    }

    /// Adds one more descriptor to sleep on, for its readability, or for its hang-up alone
    /// (`hangUpOnly`: a socket that carries other traffic); a descriptor already in the set is
    /// watched for that from now on.
    ///
    /// Once the epoll set is made it is the truth: the member list of a set that others watch
    /// descriptors into may still name one its owner closed without an `unwatch` (the epoll set
    /// forgot it), whose number a new descriptor now has. So it is added, and changed only if
    /// the epoll set has it already. False when the epoll set cannot hold it (the kernel's
    /// memory or its limit on watches, or a descriptor epoll cannot watch): nobody is woken by it.
    @discardableResult
    package func watch(_ fd: Int32, hangUpOnly: Bool = false) -> Bool {
        precondition(!isFlat, "a flat wait set watches nothing of its own")
        let member = Member(fd: fd, events: hangUpOnly ? EPOLLRDHUP.rawValue : EPOLLIN.rawValue)
        return memberList.withCheckedLock(key: lockKey(self)) { members -> Bool in
            let epoll = epollFD.load(ordering: .relaxed) // made under this lock
            if epoll >= 0 && !Self.control(epoll, EPOLL_CTL_ADD, member) {
                guard errno == EEXIST else { return false }
                let changed = Self.control(epoll, EPOLL_CTL_MOD, member)
                assert(changed, "EPOLL_CTL_MOD of \(fd): errno \(errno)") // a descriptor in the set: it cannot fail
            }
            members.set(member)
            return true
        }
    }

    /// Stops sleeping on `fd` (before it is closed).
    package func unwatch(_ fd: Int32) {
        guard !isFlat else { return }
        memberList.withCheckedLock(key: lockKey(self)) { members in
            if case let epoll = epollFD.load(ordering: .relaxed), epoll >= 0 {
                var event = epoll_event()
                _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event)
            }
            members.remove(fd)
        }
    }

    /// Adds a timer that makes the set readable every `milliseconds` (the stand-in descriptor of
    /// a core without wait descriptors); `arm` restarts the wait for the next tick. A set has at
    /// most one ticker; adding another does nothing.
    package func addTicker(milliseconds: Int) {
        precondition(!isFlat, "a flat wait set has no ticker")
        guard tickFD.load(ordering: .acquiring) < 0 else { return }
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard fd >= 0 else { return }
        let period = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
        var spec = itimerspec(it_interval: period, it_value: period)
        _ = timerfd_settime(fd, 0, &spec, nil)
        guard tickFD.compareExchange(expected: -1, desired: fd, ordering: .acquiringAndReleasing).exchanged else {
            close(fd)
            return
        }
        watch(fd)
    }

    deinit {
        if case let fd = tickFD.load(ordering: .acquiring), fd >= 0 { close(fd) }
        if case let fd = wake.load(ordering: .acquiring), fd >= 0 { close(fd) }
        if case let fd = epollFD.load(ordering: .acquiring), fd >= 0 { close(fd) }
    }

    /// Called under the progress lock before the last readiness check: clears an old wake-up and
    /// asks the next taker of completions that can serve `interest` (empty: anything) to ring.
    package func arm(for interest: WaitInterest = []) {
        // A flat set's eventfd is made before its first arming (see the invariant); -1 when it
        // cannot be, and then nobody sleeps (its transport's `tryWait` says no). A set of
        // members has one only once a caller asked for its descriptor.
        let wakeFD = isFlat ? wakeDescriptor : wake.load(ordering: .acquiring)
        if sleepers.load(ordering: .sequentiallyConsistent) == 0 {
            localSignal.clear()
            var value: UInt64 = 0
            if wakeFD >= 0 { _ = read(wakeFD, &value, 8) }
            if doorbellFD >= 0 { _ = rs_drain_doorbell(doorbellFD) }
        }
        if case let fd = tickFD.load(ordering: .acquiring), fd >= 0 {
            var ticks: UInt64 = 0
            _ = read(fd, &ticks, 8)
        }
        // Or-ed in: two waiters of one set may wait for different things.
        armed.bitwiseOr(interest.isEmpty ? 3 : interest.rawValue & 7, ordering: .sequentiallyConsistent)
    }

    /// Everything armed since the last ring (all the waiters': what the peer must ring for).
    package var armedInterest: WaitInterest { WaitInterest(rawValue: armed.load(ordering: .sequentiallyConsistent)) }

    /// Called under the progress lock by a thread that will call `sleep` once it is released.
    package func willSleep() {
        sleepers.add(1, ordering: .sequentiallyConsistent)
    }

    /// Called by whoever took completions or connection events that can serve `serves`: rings if
    /// anyone armed for it (a completion of this side's own CONTROL word, say, wakes no reader).
    @inline(__always)
    package func stateMayHaveChanged(serving serves: WaitInterest = .anything) {
        // Acquiring: a flat set's eventfd, made before the arming, is then seen by `ring`.
        guard armed.load(ordering: .acquiring) & serves.rawValue != 0 else { return }
        ring()
    }

    package func ring() {
        armed.store(0, ordering: .relaxed)
        localSignal.raise()
        // Sequentially consistent: see `wakeDescriptor`'s store.
        let wakeFD = wake.load(ordering: .sequentiallyConsistent)
        guard wakeFD >= 0 else { return } // a set whose descriptor nobody asked for
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// The longest a blocking library wait sleeps before it looks again: under the heartbeat
    /// interval, so a sleeping stream still sends its heartbeats (protocol v4) and notices a silent
    /// peer. (An async wait sleeps longer: the reactor drives its stream every second.)
    package static let longestSleepMilliseconds: Int32 = 500

    /// Milliseconds to `deadline` for `sleep`, capped at `longestSleepMilliseconds`.
    package static func milliseconds(until deadline: ContinuousClock.Instant?) -> Int32 {
        guard let deadline else { return longestSleepMilliseconds }
        let left = deadline - .now
        if left <= .zero { return 0 }
        return Int32(min(Double(longestSleepMilliseconds), left / .milliseconds(1) + 1))
    }

    /// Sleeps until the set is readable or `timeout` passes (milliseconds); the caller announced
    /// itself with `willSleep` under the progress lock.
    package func sleep(timeoutMilliseconds: Int32) {
        let woken: Int32
        if isFlat || epollFD.load(ordering: .acquiring) >= 0 {
            // The epoll set, or a flat set's eventfd alone (the reactor reads the shared queues
            // and rings it).
            var pfd = pollfd(fd: isFlat ? wakeDescriptor : epollFD.load(ordering: .acquiring), events: Int16(POLLIN), revents: 0)
            woken = poll(&pfd, 1, timeoutMilliseconds)
        } else {
            woken = pollMembers(timeoutMilliseconds: timeoutMilliseconds)
        }
        if woken == 0 {
            timedOutSleeps.add(1, ordering: .relaxed)
            ThreadSleepLog.recordTimeout()
        }
        endSleep()
    }

    /// `poll` over the members (a stream's own: open until deinit) and an eventfd lent for this
    /// sleep that `localSignal` rings, from a copy on the stack (a member watched or dropped
    /// meanwhile is seen by the next sleep: the callers look again before they sleep again).
    /// With no eventfd to be had (no descriptor left) the sleep is a nap of a millisecond at
    /// most: a ring from inside the process would reach nobody.
    private func pollMembers(timeoutMilliseconds: Int32) -> Int32 {
        let lent = SleeperEventfds.borrow()
        defer { if lent >= 0 { SleeperEventfds.giveBack(lent) } }
        if lent >= 0 && localSignal.watch(eventfd: lent) { return 1 } // rung since the arming
        defer { if lent >= 0 { localSignal.unwatch(eventfd: lent) } }
        let timeout = lent >= 0 ? timeoutMilliseconds : min(timeoutMilliseconds, 1)
        let capacity = Self.mostMembersPolled + 1
        return withUnsafeTemporaryAllocation(of: pollfd.self, capacity: capacity) { fds -> Int32 in
            let count = memberList.withCheckedLock(key: lockKey(self)) { members -> Int in
                assert(members.count < capacity, "more members than a stream's set has")
                let polled = min(members.count, capacity - 1)
                for i in 0..<polled {
                    let member = members[i]
                    let events = member.events == EPOLLRDHUP.rawValue ? Self.pollReadHangUp : Int32(POLLIN)
                    fds.initializeElement(at: i, to: pollfd(fd: member.fd, events: Int16(events), revents: 0))
                }
                guard lent >= 0 else { return polled }
                fds.initializeElement(at: polled, to: pollfd(fd: lent, events: Int16(POLLIN), revents: 0))
                return polled + 1
            }
            defer { fds.baseAddress!.deinitialize(count: count) }
            return poll(fds.baseAddress!, nfds_t(count), timeout)
        }
    }

    /// `POLLRDHUP` (a GNU extension that Glibc's module does not export; the kernel's value).
    private static let pollReadHangUp: Int32 = 0x2000

    /// The most members a library sleep polls (besides the eventfd lent to it): a stream's own
    /// set has at most four (its two queues' wait descriptors, or its set-up socket; a ticker;
    /// its eventfd once its descriptor was asked for; nothing else watches into it).
    static let mostMembersPolled = 8

    /// Sleeps that ended by their timeout, not by a ring (for tests: a wake-up that should have
    /// come by a ring shows here).
    package let timedOutSleeps = Atomic<Int>(0)

    /// Called by a counted sleeper once it is awake (`sleep` does it; a task the reactor resumed
    /// does it itself).
    package func endSleep() {
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
    }
}

/// The sleeps of the calling thread that ran out, on any wait set (for tests: a call blocked on a
/// set that other threads sleep on too, such as a lingering close, can tell whether it was rung
/// awake). Kept in every build: it costs a thread-local store per sleep that ran out, a slow path.
package enum ThreadSleepLog {
    /// Nil when the process has no thread key left (a host program's business): nothing is counted.
    private static let key: pthread_key_t? = {
        var key = pthread_key_t()
        return pthread_key_create(&key, nil) == 0 ? key : nil
    }()

    package static var timedOut: Int { key.map { Int(bitPattern: pthread_getspecific($0)) } ?? 0 }

    static func recordTimeout() {
        guard let key else { return }
        _ = pthread_setspecific(key, UnsafeRawPointer(bitPattern: timedOut + 1))
    }
}
