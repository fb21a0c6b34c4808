/// When this side owes the peer a CONTROL word (protocol v4, "Control"), as a pure rule.
///
/// Due when: FIN is wanted; a heartbeat is due; half the receive ring (or, where the transport
/// finds CONTROL words cheap, a smaller part: `controlWordsPerRing`) or half the credits are to
/// be returned; the peer would otherwise stall (its data needs more than the reserve of credits,
/// a CONTROL word needs one); or, once the peer's FIN is in, a sixteenth of the ring was freed or
/// the last byte consumed (the peer may be waiting in its close for everything it sent to be
/// consumed; protocol v4 allows an early CONTROL). A credit used by a CONTROL word alone returns
/// only with others, so two idle peers never bounce CONTROL words back and forth.
struct ControlSchedule {
    let receiveCapacity: Int
    let localRxCredits: Int
    /// Credits held back for CONTROL words on each side.
    let reserve: Int
    // The thresholds, divided once: this rule runs on every receive.
    private let ringPart: Int
    private let sixteenthRing: Int
    private let halfCredits: Int

    init(receiveCapacity: Int, localRxCredits: Int, reserve: Int, controlWordsPerRing: Int = 2) {
        precondition(controlWordsPerRing >= 2, "protocol v4 returns space at the latest each half ring")
        precondition(controlWordsPerRing <= receiveCapacity, "a CONTROL word per freed byte at most")
        self.receiveCapacity = receiveCapacity
        self.localRxCredits = localRxCredits
        self.reserve = reserve
        ringPart = receiveCapacity / controlWordsPerRing
        sixteenthRing = receiveCapacity / 16
        halfCredits = (localRxCredits + 1) / 2
    }

    /// `peerFinReceived` and `allConsumed` are asked only when the answer depends on them.
    @inline(__always)
    func isDue(wantFin: Bool, beat: Bool, returns: UnreportedReturns,
               peerFinReceived: () -> Bool, allConsumed: () -> Bool) -> Bool {
        let freed = returns.freed, credits = returns.credits
        guard wantFin || beat || freed > 0 || credits > 0 else { return false }
        let rx = localRxCredits
        return wantFin || beat
            || freed >= ringPart
            || credits >= halfCredits
            || (returns.dataCredits > 0 && rx - credits <= reserve)
            || rx - credits <= 1
            || (freed > 0 && peerFinReceived() && (freed >= sixteenthRing || allConsumed()))
    }
}
