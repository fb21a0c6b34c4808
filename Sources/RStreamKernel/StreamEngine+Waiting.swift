// Waiting and the connection, over whatever transport carries the stream: the transport owns the
// wait set and the connection's events; the engine decides what readiness is.
extension StreamEngine {
    /// Reads this stream's connection events; the peer's leaving ends the stream (a reset unless
    /// its FIN came first).
    package func pollConnectionEvents() {
        if transport.takePeerLeft() { peerDidDisconnect() }
    }

    /// The last step before sleeping on `transport.waitSet`: drives progress, then, under the
    /// progress lock (where completions are taken), arms the wait set and checks readiness for
    /// `interest` (an empty interest waits for any completion) and the transport's `tryWait`. True
    /// when the caller may sleep; false when it should look again (or when the transport offers
    /// no descriptor). A `sleeper` is counted, and must call `transport.waitSet!.sleep` next.
    /// `unless` is asked after arming (a close from another thread: it rings after raising what
    /// `unless` reads, so either this sees it or the sleep is rung awake).
    /// `wakeOn` is what the wait set is armed for (default: `interest`): a descriptor handed to the
    /// user is armed for anything (`WaitInterest.anything`). `lookAgainIfHeard`: false when this
    /// very call took a word of the peer (`fi_trywait`'s rule: a C caller judging more than
    /// `interest`, room say, must look before it sleeps).
    package func prepareToWait(for interest: WaitInterest, sleeper: Bool = false, wakeOn: WaitInterest? = nil,
                               lookAgainIfHeard: Bool = false, unless interrupted: () -> Bool = { false }) -> Bool {
        guard let waitSet = transport.waitSet else { return false }
        for _ in 0..<8 {
            if progress() && lookAgainIfHeard { return false }
            pollConnectionEvents()
            let verdict = withProgressLock { () -> Bool? in
                // Armed before the last look: whatever happens after it rings the wait set.
                waitSet.arm(for: wakeOn ?? interest)
                if transport.hasConnectionEvent { return nil }
                if interrupted() { return false }
                if interest.contains(.readable) && isReadable { return false }
                if interest.contains(.writable) && mayBeWritable { return false }
                guard transport.tryWait(for: wakeOn ?? interest) else { return nil }
                if sleeper { waitSet.willSleep() }
                return true
            }
            if let verdict { return verdict }
        }
        return false
    }

    /// The duty of a waiter that sleeps long (a task on the reactor, every second): drives
    /// progress (a heartbeat when one is due, the peer timeout judged) and says whether the stream
    /// is now ready for `interest`. No arming: the waiter stays armed from its `prepareToWait`.
    package func tickWhileWaiting(for interest: WaitInterest) -> Bool {
        progress()
        return transport.hasConnectionEvent || hasFailed
            || interest.contains(.readable) && isReadable || interest.contains(.writable) && mayBeWritable
    }

    /// `wait(for:)`'s look, sync or async: drives progress, then whether the stream is ready for
    /// `interest`. Writable counts a call that would not block: room, a failure to report, the
    /// shutdown (a send then fails at once with `.closed`), or the peer's leaving (`.connectionReset`). The same readiness `prepareToWait`
    /// judges, so that a wait never spins between "ready, do not sleep" and "not ready".
    package func progressAndCheck(readyFor interest: WaitInterest) -> Bool {
        progress()
        if interest.contains(.readable) && isReadable { return true }
        return interest.contains(.writable) && (hasRoom || hasFailed || isShutdown || peerHasDisconnected)
    }

    /// `flush`'s look: drives progress; true once every byte accepted and the FIN (if asked
    /// for) have left; a failure is thrown.
    package func progressAndCheckFlushed() throws(RStreamError) -> Bool {
        progress()
        if let failure { throw failure }
        if isQuiescent && (!isShutdown || hasSentFin) { return true }
        // Gone after its FIN: what is left can never go (a flush waited for ever).
        if peerHasDisconnected { throw Self.peerLeftError }
        return false
    }

    /// True once the connection went away, whoever read the event.
    package var peerHasDisconnected: Bool { signals.pointee.peerDisconnected.load(ordering: .acquiring) }

    /// A peer silent this long while our bytes wait is taken for one that is not reading now.
    package static var closeQuietPeriod: Duration { .milliseconds(250) }

    /// What a lingering close waits for: the FIN and every write gone, and the peer done with the
    /// bytes, or quiet (not reading: it sends no CONTROL words), or gone, or failed. Closing the
    /// connection while the peer still reads and returns space can lose its tail: on `tcp` a
    /// socket closed while the peer's words still arrive resets the connection, and the peer's
    /// kernel drops what it had not read.
    package var hasFinishedClosing: Bool {
        if failure != nil || peerHasDisconnected { return true }
        guard hasSentFin && isQuiescent else { return false }
        if peerHasConsumedEverything { return true }
        let silence = progressShard.pointee.withCheckedLock(key: progressKey) { (p: inout ProgressShard) -> Duration in p.liveness.silence }
        return silence >= Self.closeQuietPeriod
    }

    /// What a lingering close reports: the FIN and every write left and the peer consumed every
    /// byte, and nothing failed (the peer's leaving after that is no failure).
    package var hasDeliveredEverything: Bool {
        failure == nil && hasSentFin && isQuiescent && peerHasConsumedEverything
    }

    /// The lingering close of both faces (the Swift API's `close`, the provider's `fi_close`):
    /// starts the FIN, waits up to `linger` for `hasFinishedClosing`, then ends the connection and
    /// wakes any sleeper. True when everything was delivered (`hasDeliveredEverything`).
    @discardableResult
    package func closeLingering(for linger: Duration) -> Bool {
        shutdown()
        let finished = (try? lingerWait(linger).run(prepare: { prepareToWait(for: [], sleeper: true) }) { _ in lingerRound() }) ?? false
        return endClose(finished: finished)
    }

    /// `closeLingering` for a task: its sleeps suspend the task, not its thread. A cancelled task
    /// ends the linger early (the connection is then ended at once, as a linger that ran out).
    @discardableResult
    package func closeLingeringAsync(for linger: Duration) async -> Bool {
        shutdown()
        let finished = (try? await lingerWait(linger).runAsync(prepare: { prepareToWait(for: [], sleeper: true) }, watching: true) { _ in lingerRound() }) ?? false
        return endClose(finished: finished)
    }

    /// Sleeps of at most 50 ms: the peer's quiet period is a judgement of time, which a sleep on
    /// the descriptor (woken only by the peer's words) would not make.
    private func lingerWait(_ linger: Duration) -> BlockingWait {
        BlockingWait(deadline: ContinuousClock.now + linger, waitSet: transport.waitSet, longestSleep: 50, what: "the close")
    }

    private func lingerRound() -> Bool? {
        progress()
        return hasFinishedClosing ? true : nil
    }

    private func endClose(finished: Bool) -> Bool {
        let delivered = finished && hasDeliveredEverything
        disconnect()
        transport.waitSet?.ring()
        return delivered
    }

    /// Ends the connection once this side is done with it.
    package func disconnect() { transport.disconnect() }
}
