// The send shard's own work: CONTROL words (credit and space returns, FIN, heartbeats) and the
// requests other shards leave for it (see `StreamEngine`'s header).
extension StreamEngine {
    /// Asks for a CONTROL word from a shard that does not hold the send lock: sent now if the lock
    /// is free, else by its holder, which looks at `sendWorkDue` again after releasing it.
    func requestControl() {
        // Most calls free too little to owe a CONTROL word; they pay a few loads, not a lock.
        if controlMayBeDue { requestSendWork() }
        serveSendWork() // a request standing from before (a staged write, a heartbeat) too
    }

    @inline(__always)
    private func isDue(wantFin: Bool, beat: Bool, _ returns: UnreportedReturns) -> Bool {
        schedule.isDue(wantFin: wantFin, beat: beat, returns: returns,
                       peerFinReceived: { counters.progress.pointee.finReceived.load(ordering: .acquiring) },
                       allConsumed: { counters.readable == 0 })
    }

    /// A lock-free look at whether a CONTROL word may be due (it may read a flush half done, which
    /// only makes it answer yes more often).
    var controlMayBeDue: Bool {
        let send = counters.send
        let wantFin = send.pointee.finRequested.load(ordering: .acquiring) && !send.pointee.finSent.load(ordering: .acquiring)
        return isDue(wantFin: wantFin, beat: false, counters.unreported)
    }

    /// Does requested send-shard work while the send lock can be had. `serveSendWork(_:)` clears
    /// the request before it reads what to do, so a request made meanwhile is seen by the loop
    /// after it; a holder the try-lock missed runs this loop itself after releasing. It stops
    /// when what is left stands on its own (no credits, the queue full): that waits for
    /// completions, and the progress that reads them serves it again.
    func serveSendWork() {
        while signals.pointee.sendWorkDue.load(ordering: .sequentiallyConsistent) {
            let served = sendShard.pointee.withCheckedLockIfAvailable(key: sendKey) { (s: inout SendShard) -> (standing: Bool, returns: Int) in
                (serveSendWork(&s), counters.returnsSeen)
            }
            guard let served else { return } // its holder serves the request after releasing
            // What stands waits for credits: if some came back while the lock was held (their
            // reader's try-lock missed), look again now rather than at the next completion.
            guard !served.standing || counters.returnsSeen != served.returns else { return }
        }
    }

    /// Runs `body` under the send lock, then does send-shard work requested meanwhile.
    func withSendLock<R>(_ body: (inout SendShard) throws(RStreamError) -> R) throws(RStreamError) -> R {
        let result = try sendShard.pointee.withCheckedLock(key: sendKey) { (s: inout SendShard) throws(RStreamError) -> R in
            let result = try body(&s)
            if signals.pointee.sendWorkDue.load(ordering: .sequentiallyConsistent) { _ = serveSendWork(&s) }
            return result
        }
        serveSendWork()
        counters.checkInvariants()
        return result
    }

    /// The send shard's own work (send lock held): post a staged write, then a CONTROL word or
    /// heartbeat when one is due. Work that cannot go yet (a write still staged, a word without
    /// credits) keeps the request standing, so the next completion retries it even if nobody
    /// sends again; true when some is left standing.
    func serveSendWork(_ s: inout SendShard) -> Bool {
        signals.pointee.sendWorkDue.store(false, ordering: .sequentiallyConsistent)
        guard !hasFailed else { return false }
        do throws(RStreamError) { try flushStaged(&s) } catch {
            fail(error)
            return false
        }
        let wordWaits = flushControl(&s)
        return wordWaits || !s.staged.isEmpty
    }

    /// Sends a CONTROL word when one is due (send lock held); true when one is owed but could not
    /// go (its request then stands).
    @discardableResult
    private func flushControl(_ s: inout SendShard) -> Bool {
        guard !hasFailed, !signals.pointee.peerDisconnected.load(ordering: .acquiring) else { return false }
        let sc = counters.send
        let finSent = sc.pointee.finSent.load(ordering: .relaxed)
        let wantFin = sc.pointee.finRequested.load(ordering: .relaxed) && !finSent && s.staged.isEmpty
        let beat = signals.pointee.beatDue.load(ordering: .acquiring)
        let returns = counters.unreported
        guard isDue(wantFin: wantFin, beat: beat, returns) else { return false }
        // The progress shard refuses a peer's receive beyond its credits before counting it, but a
        // CONTROL word undone below briefly reports them as returned: never encode more than exist.
        guard returns.credits <= localRxCredits else {
            fail(.protocolViolation("peer used \(returns.credits) receives; \(localRxCredits) were credited"))
            return false
        }
        guard counters.txAvailable >= 1, counters.peerReceivesAvailable >= 1 else {
            // Owed but not sendable yet: the request stands for when completions or credits come.
            requestSendWork()
            return true
        }
        // Every word after our FIN repeats it: the only words the peer accepts after a FIN. Any
        // CONTROL word that goes while a heartbeat is due is the heartbeat.
        let word = NotificationWord.control(freed: returns.freed, credits: returns.credits, fin: wantFin || finSent, beat: beat).encoded
        // Counted before the post: its completion, and the peer's use of what it returns, may be
        // read by another thread at once.
        let before = (sc.pointee.reportedFreed.load(ordering: .relaxed), sc.pointee.reportedCredits.load(ordering: .relaxed),
                      sc.pointee.reportedDataCredits.load(ordering: .relaxed))
        sc.pointee.txTaken.advance(by: 1)
        sc.pointee.peerReceivesTaken.advance(by: 1)
        sc.pointee.reportedFreed.advance(by: returns.freed)
        sc.pointee.reportedCredits.store(returns.receivesUsedNow, ordering: .releasing)
        sc.pointee.reportedDataCredits.store(returns.dataReceivesUsedNow, ordering: .releasing)
        func undo() {
            sc.pointee.txTaken.advance(by: -1)
            sc.pointee.peerReceivesTaken.advance(by: -1)
            sc.pointee.reportedFreed.store(before.0, ordering: .releasing)
            sc.pointee.reportedCredits.store(before.1, ordering: .releasing)
            sc.pointee.reportedDataCredits.store(before.2, ordering: .releasing)
        }
        let posted: Bool
        do throws(RStreamError) { posted = try transport.send(word: word) } catch {
            undo()
            fail(error)
            return false
        }
        guard posted else {
            undo()
            requestSendWork() // the queue was full: again later
            return true
        }
        if wantFin { sc.pointee.finSent.store(true, ordering: .releasing) }
        if beat { signals.pointee.beatDue.store(false, ordering: .releasing) }
        return false
    }
}
