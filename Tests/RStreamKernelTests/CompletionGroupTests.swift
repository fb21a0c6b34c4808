import Testing
@testable import RStreamKernel

// The parts of a shared completion queue: each stream's inbox and the member table.

/// The inbox a shared completion queue's reader routes one stream's completions into.
@Suite struct CompletionInboxTests {
    static func completion(_ i: Int) -> RoutedCompletion {
        RoutedCompletion(context: UInt(i), data: UInt32(i), flags: [.receive, .dataFits], length: i)
    }

    @Test func completionsComeOutInOrderAndIntact() {
        let inbox = CompletionInbox(capacity: 5, waitSet: nil) // rounded up to 8
        #expect(inbox.capacity == 8)
        var out = [RoutedCompletion](repeating: Self.completion(0), count: 3)
        for round in 0..<5 { // wraps several times
            for i in 0..<6 { #expect(inbox.push(Self.completion(round * 10 + i))) }
            var taken: [RoutedCompletion] = []
            while case let n = out.withUnsafeMutableBufferPointer({ inbox.take(into: $0) }), n > 0 { taken += out[0..<n] }
            #expect(taken == (0..<6).map { Self.completion(round * 10 + $0) })
            #expect(inbox.isEmpty)
        }
        #expect(!inbox.hasOverflowed)
    }

    /// A push beyond what the stream can have outstanding is refused and marks the inbox, so the
    /// stream fails rather than losing a completion unseen.
    @Test func aPushIntoAFullInboxIsRefusedAndMarked() {
        let inbox = CompletionInbox(capacity: 4, waitSet: nil)
        for i in 0..<4 { #expect(inbox.push(Self.completion(i))) }
        #expect(!inbox.push(Self.completion(4)))
        #expect(inbox.hasOverflowed)
    }

    @Test func aRoutedCompletionKeepsItsFieldsAndClampsItsLength() {
        let c = RoutedCompletion(context: 0xABCD_0001_0002_0003, data: 7, flags: [.error, .receive], length: 1 << 20)
        #expect(c.context == 0xABCD_0001_0002_0003 && c.data == 7 && c.flags == [.error, .receive] && c.length == 0xFFFF)
    }

    @Test func aContextNamesItsMemberAndGeneration() {
        let bits = CompletionGroup.contextBits(member: 0x12345, generation: 0xBEEF) | 3 << 32 | 0x1234
        #expect(CompletionGroup.member(of: bits) == 0x12345)
        #expect(CompletionGroup.generation(of: bits) == 0xBEEF)
    }
}

/// The member table of a shared completion queue: who a completion's context reaches.
@Suite struct CompletionMembersTests {
    static func context(_ member: (number: Int, generation: UInt16), slot: UInt = 5) -> UInt {
        CompletionGroup.contextBits(member: member.number, generation: member.generation) | slot
    }

    /// A late completion of a member that left, whose number now belongs to another stream,
    /// reaches nobody; the new member's reach it.
    @Test func aLateCompletionOfAMemberGoneReachesNobody() throws {
        var members = CompletionMembers(capacity: 100, maxMembers: 8)
        let firstReserved = members.reserve(10)
        let first = try #require(firstReserved)
        let old = CompletionInbox(capacity: 4, waitSet: nil)
        members.attach(old, as: first.number)
        #expect(members.inbox(for: Self.context(first)) === old)
        members.release(first.number, generation: first.generation, reusable: true)
        #expect(members.inbox(for: Self.context(first)) == nil)

        let secondReserved = members.reserve(10)
        let second = try #require(secondReserved)
        #expect(second.number == first.number && second.generation != first.generation)
        let new = CompletionInbox(capacity: 4, waitSet: nil)
        members.attach(new, as: second.number)
        #expect(members.inbox(for: Self.context(first)) == nil) // the old generation
        #expect(members.inbox(for: Self.context(second)) === new)
        #expect(members.inbox(for: 5) == nil) // member 0 is nobody
        #expect(members.inbox(for: Self.context((7, 0))) == nil) // a number never given out
    }

    /// A number whose last completions could not be read is never given out again.
    @Test func aQuarantinedNumberIsNeverGivenOutAgain() throws {
        var members = CompletionMembers(capacity: 1000, maxMembers: 3)
        let aReserved = members.reserve(1)
        let a = try #require(aReserved)
        let bReserved = members.reserve(1)
        let b = try #require(bReserved)
        members.release(a.number, generation: a.generation, reusable: false)
        members.release(b.number, generation: b.generation, reusable: true)
        var given: [Int] = []
        while let next = members.reserve(1) { given.append(next.number) }
        #expect(!given.contains(a.number))
        #expect(given.sorted() == [b.number, 3]) // 3 new numbers at most: 1, 2, 3
        #expect(members.reserved == 2)
    }

    /// Reservations never exceed the queue; leaving gives the room back.
    @Test func reservationsStayWithinTheQueue() throws {
        var members = CompletionMembers(capacity: 100, maxMembers: 1000)
        let aReserved = members.reserve(60)
        let a = try #require(aReserved)
        #expect(members.reserve(41) == nil)
        let bReserved = members.reserve(40)
        let b = try #require(bReserved)
        #expect(members.reserved == 100 && members.reserve(1) == nil)
        members.release(a.number, generation: a.generation, reusable: true)
        #expect(members.reserved == 40)
        let cReserved = members.reserve(60)
        let c = try #require(cReserved)
        #expect(c.number == a.number) // a's number, a newer generation
        members.release(a.number, generation: a.generation, reusable: true) // a stale release ends nobody
        #expect(members.reserved == 100)
        members.release(b.number, generation: b.generation, reusable: true)
        members.release(b.number, generation: b.generation, reusable: true) // a second release is nothing
        #expect(members.reserved == 60)
    }

    /// Numbers come back longest free first, across the table's compaction of its free list.
    @Test func freeNumbersAreReusedOldestFirst() throws {
        var members = CompletionMembers(capacity: 10_000, maxMembers: 1000)
        let given = (0..<300).compactMap { _ in members.reserve(1) }
        #expect(given.count == 300)
        for member in given { members.release(member.number, generation: member.generation, reusable: true) }
        let again = (0..<300).compactMap { _ in members.reserve(1)?.number }
        #expect(again == given.map(\.number))
        #expect(members.reserve(1)?.number == 301)
    }
}
