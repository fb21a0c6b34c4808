/// The members of one `CompletionGroup`: which inbox a completion's context names, and the queue
/// entries each member reserved. Used under the group's lock.
///
/// Invariants (`checkInvariants`, debug builds): numbers are 1...`maxMembers` (0 names no
/// member); a number is bound to at most one inbox, from `attach` until `release`, and only while
/// it holds a reservation; `reserved` is the sum of the reservations and never exceeds
/// `capacity`; a number's generation changes each time it is given out again (wrapping after
/// 65,536 reuses of one number, long after any completion of the first could come: a member's
/// leave reads the queue empty first), so a completion of a member gone (its number free, or
/// another member's now) reaches nobody, and a release names the generation it ends; a number
/// released as not reusable (its last completions could not be read) is never given out again.
package struct CompletionMembers {
    package let capacity: Int
    package let maxMembers: Int
    /// Index 0 is no member.
    private var inboxes: [CompletionInbox?] = [nil]
    /// Each number's generation (the context's bits 16-31).
    private var generations: [UInt16] = [0]
    /// Numbers free for reuse, the longest free first (from `freeHead` on).
    private var free: [Int] = []
    private var freeHead = 0
    /// Member number → the entries it reserved.
    private var reservations: [Int: Int] = [:]
    package private(set) var reserved = 0

    package init(capacity: Int, maxMembers: Int) {
        precondition(capacity > 0 && maxMembers > 0)
        self.capacity = capacity
        self.maxMembers = maxMembers
    }

    /// A number and its generation for a member that may have `reserving` completions
    /// outstanding, or nil when the queue has no room for it (or every number is taken).
    package mutating func reserve(_ reserving: Int) -> (number: Int, generation: UInt16)? {
        precondition(reserving > 0, "a member reserves at least one entry")
        guard reserved + reserving <= capacity else { return nil }
        let number: Int
        if freeHead < free.count {
            number = free[freeHead]
            freeHead += 1
            if freeHead >= 64 && freeHead * 2 >= free.count { // drop the used prefix now and then
                free.removeFirst(freeHead)
                freeHead = 0
            }
            generations[number] &+= 1
        } else {
            guard inboxes.count <= maxMembers else { return nil }
            number = inboxes.count
            inboxes.append(nil)
            generations.append(0)
        }
        reserved += reserving
        reservations[number] = reserving
        checkInvariants()
        return (number, generations[number])
    }

    /// Routes member `number`'s completions to `inbox` from now on.
    package mutating func attach(_ inbox: CompletionInbox, as number: Int) {
        precondition(reservations[number] != nil && inboxes[number] == nil, "attach of member \(number), not reserved")
        inboxes[number] = inbox
    }

    /// Ends member `number` of `generation` (its endpoint closed, its last completions read
    /// unless `reusable` is false): its entries go back, and its number is free for another
    /// member if `reusable`. A release of a generation that is not the number's current one (a
    /// second release, after the number went to a newer member) does nothing and answers false.
    @discardableResult
    package mutating func release(_ number: Int, generation: UInt16, reusable: Bool) -> Bool {
        guard number > 0, number < generations.count, generations[number] == generation,
              let reservation = reservations.removeValue(forKey: number) else { return false }
        inboxes[number] = nil
        reserved -= reservation
        if reusable { free.append(number) }
        checkInvariants()
        return true
    }

    /// The inbox of the member `context` names, if that member (of that generation) is here.
    @inline(__always)
    package func inbox(for context: UInt) -> CompletionInbox? {
        let number = CompletionGroup.member(of: context)
        guard number > 0, number < inboxes.count, CompletionGroup.generation(of: context) == generations[number] else {
            return nil
        }
        return inboxes[number]
    }

    /// Every member's inbox.
    package var everyInbox: [CompletionInbox] { inboxes.compactMap { $0 } }

    /// Checks the invariants above (debug builds only): the scans, only while the table is small
    /// (a debug build of the 10,000-stream test would be quadratic).
    package func checkInvariants() {
        #if DEBUG
        precondition(inboxes.count == generations.count && inboxes.count - 1 <= maxMembers)
        precondition(reserved >= 0 && reserved <= capacity, "reserved \(reserved) of \(capacity)")
        guard inboxes.count <= 512 else { return }
        precondition(reserved == reservations.values.reduce(0, +), "reserved \(reserved) is not the sum of the reservations")
        for (number, inbox) in inboxes.enumerated() where inbox != nil {
            precondition(number > 0 && reservations[number] != nil, "member \(number) has an inbox but no reservation")
        }
        let waiting = free[freeHead...]
        precondition(Set(waiting).count == waiting.count, "a number is free twice")
        for number in waiting {
            precondition(number > 0 && number < inboxes.count && reservations[number] == nil, "free number \(number) is in use")
        }
        #endif
    }
}
