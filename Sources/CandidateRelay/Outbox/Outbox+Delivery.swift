import Foundation
import GRDB
import Synchronization

/// An event leased to one worker: its payload, its attempt number and the lease generation.
public struct ClaimedEvent: Sendable {
    public var id: String
    public var account: String
    public var attempt: Int
    /// The lease generation this claim holds; outcomes compare-and-set on it.
    public var lease: Int
    public var positionUID: String
    public var partnerCandidateID: String
    public var payload: Data
    public var receivedAt: Date
    /// Start of the age budget (`max_age_seconds`): receipt, or the last `events retry`.
    public var budgetStartedAt: Date
    /// When the lease was taken (or last renewed); it runs `leaseSeconds` from here.
    public var leasedAt: Date
    /// What the payload holds of `Outbox.payloadMemory` (0 for a small one): given back with
    /// `Outbox.releasePayload` once the delivery is over.
    public var heldBytes = 0
}

/// How one attempt ended, as the outbox records it.
public enum RecordedOutcome: Sendable, Equatable {
    case delivered(candidateUID: String, status: Int, summary: String?, fullResponse: Data?)
    case linked(candidateUID: String, status: Int, error: String?)
    case retry(at: Date, status: Int?, error: String)
    case dead(status: Int?, error: String)
    /// Handed back at shutdown, its request cut off unanswered: pending again from `resendAt`
    /// (the partner may still be at work on it: `DeliverySettings.abandonedHoldSeconds`), the
    /// attempt not counted.
    case interrupted(resendAt: Date)
    /// Claimed and never sent (claimed ahead by a busy worker at shutdown or when workers were
    /// removed; the account paused, removed or its lease taken back before the request):
    /// pending again, the attempt not counted and no history row (no request to remember, none
    /// to count in the rate windows after a restart).
    case unsent

    var state: EventState {
        switch self {
        case .delivered: .delivered
        case .linked: .linked
        case .retry, .interrupted, .unsent: .pending
        case .dead: .dead
        }
    }

    /// The error recorded with the outcome (`code: message`, or a code), if any.
    var error: String? {
        switch self {
        case .linked(_, _, let error): error
        case .retry(_, _, let error), .dead(_, let error): error
        case .delivered, .interrupted, .unsent: nil
        }
    }

    /// What erasure keeps of `error`: its code.
    var errorCode: String? { error.map { String($0.prefix { $0 != ":" }) } }

    var name: String {
        switch self {
        case .delivered: "delivered"
        case .linked: "linked"
        case .retry: "retry"
        case .dead: "dead"
        case .interrupted: "interrupted"
        case .unsent: "unsent"
        }
    }
}

/// An event that went dead at claim time without being sent (age budget spent, payload erased).
public struct ExpiredEvent: Sendable, Equatable {
    public var id: String
    public var account: String
    public var positionUID: String
    public var partnerCandidateID: String
    public var attempts: Int
    public var reason: String
}

/// One worker's claim, as queued for the claim group commit.
struct ClaimRequest: Sendable {
    /// The accounts that may send now, in the order to try them (fairness is the caller's).
    var accounts: [String]
    /// Only an account whose oldest due event arrived at or after this (the worker kept free
    /// for fresh events); nil: any.
    var freshSince: Date?
    /// Only an event whose payload is small (a claim ahead by a busy worker must not hold a
    /// large body while its current request is out; a free worker takes that one).
    var smallPayloadOnly = false
    var now: Date
    var leaseSeconds: Double
    var maxAgeSeconds: Double
    var maxAttempts: Int
    /// Where a large payload must find room; nil: not counted (`claimNext`, for tests).
    var memory: PayloadMemory? = nil
    /// What this claim took of `memory`, so that a batch that fails to commit gives it back.
    let taken = TakenBytes()
}

/// The bytes one claim took of `PayloadMemory` inside a transaction that may yet fail.
final class TakenBytes: Sendable {
    let bytes = Atomic<Int>(0)
}

/// One recorded outcome, as queued for the completion group commit.
struct Completion: Sendable {
    var event: ClaimedEvent
    var outcome: RecordedOutcome
    var now: Date
    var latencyMs: Int?
    /// The request was given up without an answer: until when it may still be at work at the
    /// partner (no other event of the candidate is sent before).
    var partnerOpenUntil: Date?
}

/// One write of the worker pool, as queued for its group commit.
enum DeliveryWrite: Sendable {
    case claim(ClaimRequest)
    case complete(Completion)
}

enum DeliveryWriteResult: Sendable {
    case claimed(ClaimResult)
    case completed(Bool)
}

/// What one claim produced.
public struct ClaimResult: Sendable {
    public var claimed: ClaimedEvent?
    public var expired: [ExpiredEvent]
    /// Nothing claimed because a due event's large payload did not fit in `payloadMemory`:
    /// wait for a delivery to end (a release rings the doorbell), not for a due time.
    public var waitingForMemory = false
}

extension Outbox {
    /// `claimNextDue` for callers that do not log expirations nor release payloads (tests):
    /// the payload memory is not counted.
    public func claimNext(accounts: [String] = [AccountConfiguration.defaultID], now: Date, leaseSeconds: Double,
                          maxAgeSeconds: Double, maxAttempts: Int = .max) async throws -> ClaimedEvent? {
        try await claimNextDue(accounts: accounts, now: now, leaseSeconds: leaseSeconds, maxAgeSeconds: maxAgeSeconds,
                               maxAttempts: maxAttempts, countingPayloadMemory: false).claimed
    }

    /// Leases the pending event due longest (fresh events: the oldest) of the first of `accounts`
    /// that has one, whose natural key has nothing in flight. Events past
    /// `maxAge`, with `maxAttempts` used (a crash after the last attempt, a lowered limit), or
    /// whose payload was erased are moved to `dead` instead of being sent, and returned so that
    /// the worker can log them. A large payload claimed holds its size of `payloadMemory`
    /// until `releasePayload` (unless `countingPayloadMemory` is false).
    public func claimNextDue(accounts: [String] = [AccountConfiguration.defaultID], freshSince: Date? = nil,
                             smallPayloadOnly: Bool = false, now: Date,
                             leaseSeconds: Double, maxAgeSeconds: Double, maxAttempts: Int,
                             countingPayloadMemory: Bool = true) async throws -> ClaimResult {
        guard !accounts.isEmpty else { return ClaimResult(claimed: nil, expired: []) }
        let request = ClaimRequest(accounts: accounts, freshSince: freshSince, smallPayloadOnly: smallPayloadOnly, now: now,
                                   leaseSeconds: leaseSeconds, maxAgeSeconds: maxAgeSeconds, maxAttempts: maxAttempts,
                                   memory: countingPayloadMemory ? payloadMemory : nil)
        let written: DeliveryWriteResult
        do {
            written = try await deliveryWrite(.claim(request))
        } catch {
            // The claim was rolled back with its batch: the payload it read is not held.
            payloadMemory.release(request.taken.bytes.exchange(0, ordering: .relaxed))
            throw error
        }
        guard case .claimed(let result) = written else {
            throw OutboxError.storage("claim answered with another kind of result")
        }
        return result
    }

    /// Gives back what `event`'s payload held of `payloadMemory`; true if it held any (the
    /// caller then wakes a worker that may be waiting for the room).
    @discardableResult
    public func releasePayload(_ event: ClaimedEvent) -> Bool {
        payloadMemory.release(event.heldBytes)
        return event.heldBytes > 0
    }

    /// The workers' claims and outcomes share one group commit: a worker records an outcome and
    /// claims its next event moments apart, so both usually land in the same fsync'd
    /// transaction (in arrival order: a claim sees the outcomes written before it).
    func deliveryWrite(_ write: DeliveryWrite) async throws -> DeliveryWriteResult {
        try await deliveryQueue.submit(write) { batch, done in
            self.writeBatch({ db in
                try batch.map { item -> Result<DeliveryWriteResult, any Error> in
                    switch item {
                    case .claim(let request):
                        return .success(.claimed(try Self.claimOne(db, request, quiet: self.quiet)))
                    case .complete(let completion):
                        // A retry, a hand-back: the account may have an event due sooner.
                        self.quiet.clear(completion.event.account)
                        return .success(.completed(try Self.completeOne(db, self.inCurrentFrame(completion))))
                    }
                }
            }, then: { result in
                // On the writer queue, right after the commit: see `SettledCounts`.
                if case .success(let results) = result { self.noteSettled(batch, results) }
                done(result)
            })
        }
    }

    /// One claim inside a (shared) transaction: the claims of one batch run in order, each
    /// seeing the rows the ones before it leased, so "never two in flight per natural key" holds.
    /// Accounts `quiet` marks are skipped; one found with nothing due is marked.
    static func claimOne(_ db: Database, _ request: ClaimRequest, quiet: QuietAccounts) throws -> ClaimResult {
        // A request runs again only after its batch was rolled back (`GroupCommit` retries each
        // item alone): what its first run took of the payload memory is not held.
        request.memory?.release(request.taken.bytes.exchange(0, ordering: .relaxed))
        var expired: [ExpiredEvent] = []
        var waitingForMemory = false
        for account in request.accounts where !quiet.isQuiet(account, at: request.now) {
            var nothingDue = false
            if let claimed = try claimOne(db, request, account: account, expired: &expired, nothingDue: &nothingDue,
                                          waitingForMemory: &waitingForMemory) {
                return ClaimResult(claimed: claimed, expired: expired)
            }
            if nothingDue {
                let earliest = try Millis.fetchOne(
                    db.cachedStatement(sql: "SELECT MIN(next_attempt_at) FROM events WHERE account = ? AND state = 'pending'"),
                    arguments: [account])
                quiet.note(account, earliest: earliest.map(Date.init(millis:)), now: request.now)
            }
        }
        return ClaimResult(claimed: nil, expired: expired, waitingForMemory: waitingForMemory)
    }

    /// No other event of `e`'s candidate (account, position, partner id) is in flight, nor may
    /// still be at work at the partner (`partner_open_until` after the `?`, now). Through the
    /// partial index `events_key_busy`, which holds only such events: its `WHERE` is repeated
    /// here word for word, as SQLite uses a partial index only for a query that implies it
    /// (found from outside: through the natural key's index every sibling was read, for every
    /// due event walked past, and 5,000 updates of one candidate made each claim take a second).
    static let keyIsFree = """
        NOT EXISTS (SELECT 1 FROM events o WHERE o.partner_candidate_id = e.partner_candidate_id
          AND o.position_uid = e.position_uid AND o.account = e.account
          AND (o.state = 'in_flight' OR o.partner_open_until IS NOT NULL)
          AND (o.state = 'in_flight' OR o.partner_open_until > ?))
        """

    /// The oldest due event of one account (walking its part of `events_due` in order).
    /// `nothingDue`: none was due (not one left for another worker: too old for the one kept
    /// free, too large to claim ahead). `waitingForMemory`: set when the one due has a large
    /// payload with no room for it in `request.memory`.
    private static func claimOne(_ db: Database, _ request: ClaimRequest, account: String, expired: inout [ExpiredEvent],
                                 nothingDue: inout Bool, waitingForMemory: inout Bool) throws -> ClaimedEvent? {
        let now = request.now
        while true {
            guard let row = try Row.fetchOne(db.cachedStatement(sql: """
                    SELECT id, attempts, lease, position_uid, partner_candidate_id, received_at, budget_started_at,
                      payload_erased_at IS NOT NULL AS erased FROM events e
                    WHERE account = ? AND state = 'pending' AND next_attempt_at <= ? AND \(Self.keyIsFree)
                    ORDER BY next_attempt_at, id LIMIT 1
                    """),
                arguments: [account, now.millis, now.millis]) else {
                nothingDue = true
                return nil
            }
            let id: String = row["id"]
            let receivedAt = Date(millis: row["received_at"])
            // A backlog or a retry at the head of the account: not for the worker kept free.
            if let freshSince = request.freshSince, receivedAt < freshSince { return nil }
            let budgetStartedAt = Date(millis: row["budget_started_at"])
            let attempts: Int = row["attempts"]
            // Only `forget` erases the payload of an event still to be sent (retention and `purge`
            // take delivered, linked and dead ones), while its request was out or it was claimed
            // ahead: it goes dead `erased`, as `forget` marks the pending ones, whatever its budget.
            let erased: Bool = row["erased"]
            let spent = erased || now.timeIntervalSince(budgetStartedAt) >= request.maxAgeSeconds || attempts >= request.maxAttempts
            var payload: Data?
            var held = 0
            if !spent {
                let stored = try PayloadStore.read(db, eventID: id, smallOnly: request.smallPayloadOnly) { size in
                    guard let memory = request.memory else { return true }
                    guard memory.reserve(size) else { return false }
                    held = size
                    request.taken.bytes.add(size, ordering: .relaxed)
                    return true
                }
                switch stored {
                case .body(let body): payload = body
                case .erased: payload = nil
                case .large:
                    // For a free worker, not one claiming ahead; or no room until a large
                    // delivery ends.
                    if !request.smallPayloadOnly { waitingForMemory = true }
                    return nil
                }
            }
            if spent || payload == nil {
                // (Found from outside: `payload_erased` here made `events retry --all-dead` tell
                // the operator that the sender must send the forgotten person again.)
                let reason = erased || !spent ? "erased" : attempts >= request.maxAttempts ? "attempts_exhausted" : "max_age_exceeded"
                try db.cachedStatement(sql: "UPDATE events SET state = 'dead', next_attempt_at = NULL, last_error = ?, updated_at = ? WHERE id = ?").execute(
                    arguments: [reason, now.millis, id])
                expired.append(ExpiredEvent(id: id, account: account, positionUID: row["position_uid"],
                                            partnerCandidateID: row["partner_candidate_id"], attempts: row["attempts"], reason: reason))
                continue
            }
            let attempt = attempts + 1
            let lease = (row["lease"] as Int) + 1
            try db.cachedStatement(sql: """
                    UPDATE events SET state = 'in_flight', attempts = ?, lease = ?, lease_expires_at = ?, updated_at = ?
                    WHERE id = ? AND state = 'pending'
                    """).execute(
                arguments: [attempt, lease, now.addingTimeInterval(request.leaseSeconds).millis, now.millis, id])
            return ClaimedEvent(
                id: id, account: account, attempt: attempt, lease: lease, positionUID: row["position_uid"],
                partnerCandidateID: row["partner_candidate_id"], payload: payload ?? Data(), receivedAt: receivedAt,
                budgetStartedAt: budgetStartedAt, leasedAt: now, heldBytes: held)
        }
    }

    /// A completion whose time was read on the wall clock before a step forward that has been
    /// handled since (`shiftOpenWindows` ran between the read and this write, on the same writer
    /// queue): its "may still be at the partner" window moves by the step as the stored ones
    /// did, else it would end the step's length early (the race the move is there to close).
    /// Times read before the step are at most a moment after `before`; times read after it at
    /// least the step's length after: halfway tells them apart (a step is a second or more).
    func inCurrentFrame(_ completion: Completion) -> Completion {
        guard let step = forwardStep.withLock({ $0 }),
              completion.now < step.before.addingTimeInterval(step.seconds / 2) else { return completion }
        var moved = completion
        moved.partnerOpenUntil = completion.partnerOpenUntil?.addingTimeInterval(step.seconds)
        if case .interrupted(let resendAt) = completion.outcome {
            moved.outcome = .interrupted(resendAt: resendAt.addingTimeInterval(step.seconds))
        }
        return moved
    }

    /// Records an attempt's outcome with a compare-and-set on (id, in_flight, lease): a late
    /// answer for a lease that was rescued or retried meanwhile changes nothing. Returns whether
    /// the row was updated.
    @discardableResult
    public func complete(_ event: ClaimedEvent, outcome: RecordedOutcome, now: Date, latencyMs: Int?,
                         partnerOpenUntil: Date? = nil) async throws -> Bool {
        let completion = Completion(event: event, outcome: outcome, now: now, latencyMs: latencyMs, partnerOpenUntil: partnerOpenUntil)
        guard case .completed(let recorded) = try await deliveryWrite(.complete(completion)) else {
            throw OutboxError.storage("outcome answered with another kind of result")
        }
        return recorded
    }

    /// One outcome inside a (shared) transaction.
    static func completeOne(_ db: Database, _ completion: Completion) throws -> Bool {
        let (event, outcome, now) = (completion.event, completion.outcome, completion.now)
        var status: Int?
        var sets = "state = ?, lease_expires_at = NULL, updated_at = ?"
        var arguments: StatementArguments = [outcome.state.rawValue, now.millis]
        switch outcome {
        case .delivered(let uid, let code, let summary, let full):
            status = code
            // The full answer holds personal data: not kept when `forget` erased the event meanwhile.
            sets += ", candidate_uid = ?, last_status = ?, last_error = NULL, next_attempt_at = NULL, partner_response = ?"
            sets += ", partner_response_full = CASE WHEN payload_erased_at IS NULL THEN ? END"
            arguments += [uid, code, summary, full]
        case .linked(let uid, let code, _):
            status = code
            sets += ", candidate_uid = ?, last_status = ?, next_attempt_at = NULL"
            arguments += [uid, code]
        case .retry(let at, let code, _):
            status = code
            sets += ", next_attempt_at = ?, last_status = ?"
            arguments += [at.millis, code]
        case .dead(let code, _):
            status = code
            sets += ", next_attempt_at = NULL, last_status = ?"
            arguments += [code]
        case .interrupted(let resendAt):
            // Cut off at shutdown: the request may still be at the partner until its resend.
            sets += ", next_attempt_at = ?, attempts = attempts - 1, partner_open_until = ?"
            arguments += [max(now, resendAt).millis, max(now, resendAt).millis]
        case .unsent:
            sets += ", next_attempt_at = ?, attempts = attempts - 1"
            arguments += [now.millis]
        }
        if let until = completion.partnerOpenUntil, until > now {
            switch outcome {
            case .retry, .dead:
                sets += ", partner_open_until = ?"
                arguments += [until.millis]
            case .delivered, .linked, .interrupted, .unsent:
                break
            }
        }
        switch outcome {
        case .linked, .retry, .dead:
            // `forget` may have erased the event while the request was out: the partner's
            // message may quote a submitted value, so only its code is kept then; and dead, it
            // is `erased`, as `forget` marks its dead events (review). The history keeps the code.
            sets += ", last_error = CASE WHEN payload_erased_at IS NULL THEN ? ELSE ? END"
            if case .dead = outcome {
                arguments += [outcome.error, "erased"]
            } else {
                arguments += [outcome.error, outcome.errorCode]
            }
        case .delivered, .interrupted, .unsent:
            break
        }
        arguments += [event.id, event.lease]
        // The compare-and-set and the erasure check in one statement: nil when the lease was
        // taken back meanwhile.
        guard let erased = try Bool.fetchOne(
            db.cachedStatement(sql: "UPDATE events SET \(sets) WHERE id = ? AND state = 'in_flight' AND lease = ? RETURNING payload_erased_at IS NOT NULL"),
            arguments: arguments) else { return false }
        if outcome == .unsent { return true }
        try db.cachedStatement(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?)").execute(
            arguments: [event.id, event.attempt, now.millis, outcome.name, status, erased ? outcome.errorCode : outcome.error,
                        completion.latencyMs])
        return true
    }

    /// Extends a lease that is still ours; false when it was taken back (rescued, or the
    /// outbox changed under us) or the payload was erased since the claim, in which case the
    /// caller must not send.
    public func renewLease(_ event: ClaimedEvent, seconds: Double, now: Date) async throws -> Bool {
        try await write { db in
            try db.execute(
                sql: "UPDATE events SET lease_expires_at = ? WHERE id = ? AND state = 'in_flight' AND lease = ? AND payload_erased_at IS NULL",
                arguments: [now.addingTimeInterval(seconds).millis, event.id, event.lease])
            return db.changesCount == 1
        }
    }

    /// Whether a claimed event may still be sent: the lease is still ours and `forget` (another
    /// process) has not erased the payload since the claim. A read, for an event that waited
    /// between its claim and its request (claimed ahead behind another request, a slow token).
    public func mayStillSend(_ event: ClaimedEvent) async throws -> Bool {
        try await read { db in
            try Bool.fetchOne(
                db.cachedStatement(sql: "SELECT payload_erased_at IS NULL FROM events WHERE id = ? AND state = 'in_flight' AND lease = ?"),
                arguments: [event.id, event.lease]) ?? false
        }
    }

    /// Notes a request that used no attempt (the immediate retry after a 401), so that the
    /// history and the rate limiter's memory of sent requests stay complete.
    public func recordAuthRetry(_ event: ClaimedEvent, status: Int, now: Date, latencyMs: Int) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error, latency_ms) VALUES (?, ?, ?, 'auth_retry', ?, 'unauthorized', ?)",
                arguments: [event.id, event.attempt, now.millis, status, latencyMs])
        }
    }

    /// Puts leases back to pending: all of them at start-up (`expiredBefore == nil`; we hold the
    /// file lock, so no other daemon owns them), or only expired ones while running. At start-up
    /// a lease's request may have been cut off by the crash while the partner still works on it:
    /// it is due no sooner than `holdSeconds` after the restart (a resend at once was a second
    /// request for the same candidate at the partner while the first was open, which two
    /// concurrent creates can turn into a duplicate). An expired lease is older than that.
    @discardableResult
    public func recoverLeases(expiredBefore: Date?, now: Date, holdSeconds: Double = 0, excluding held: Set<String> = []) async throws -> Int {
        let recovered = try await write { db -> Int in
            if let expiredBefore {
                // Leases a live worker of this process still holds are not taken back, however
                // old: the process was frozen (SIGSTOP, a paused VM) past their expiry, and the
                // worker is about to record the answer it has (taken back, a 201 in hand was
                // thrown away and the candidate sent again).
                let expired = try String.fetchAll(
                    db, sql: "SELECT id FROM events WHERE state = 'in_flight' AND lease_expires_at < ?", arguments: [expiredBefore.millis])
                var count = 0
                for id in expired where !held.contains(id) {
                    try db.execute(
                        sql: "UPDATE events SET state = 'pending', lease_expires_at = NULL, next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'in_flight'",
                        arguments: [now.millis, now.millis, id])
                    count += db.changesCount
                }
                // Events due again: their accounts' quiet marks go, in this transaction.
                if count > 0 { self.quiet.clearAll() }
                return count
            } else {
                // Held from now, not from the claim (updated_at): the request may have left well
                // after its claim (a slow token, the resend after a 401 waiting for a place of the
                // rate window) and as late as the crash, which was before now. Found from outside:
                // held from the claim, the resend met the first request still at work at the
                // partner, and both created the candidate. (Called after the start's rebase for a
                // clock set back: `now` is on the clock as it is.)
                let until = now.addingTimeInterval(holdSeconds).millis
                try db.execute(
                    sql: """
                        UPDATE events SET state = 'pending', lease_expires_at = NULL, next_attempt_at = ?,
                          partner_open_until = ?, updated_at = ?
                        WHERE state = 'in_flight'
                        """,
                    arguments: [until, until, now.millis])
                if db.changesCount > 0 { self.quiet.clearAll() }
                return db.changesCount
            }
        }
        return recovered
    }

    /// When the next claimable pending event of `accounts` becomes due, to sleep exactly that
    /// long when idle. Events whose natural key is in flight are left out: they wait for that
    /// delivery, and counting them would make idle workers spin.
    public func nextDueAt(accounts: [String] = [AccountConfiguration.defaultID], now: Date) async throws -> Date? {
        try await read { [quiet] db in
            var earliest: Millis?
            for account in accounts {
                // A quiet account (`QuietAccounts`): nothing of it is due before its mark ends.
                if let until = quiet.quietUntil(account, at: now) {
                    earliest = min(earliest ?? until.millis, until.millis)
                    continue
                }
                // Walks the account's pending events in due order and stops at the first free one.
                // Events whose candidate may still be open at the partner (another event's request
                // given up without an answer) are left out too; the end of the earliest such
                // window is a time to look again.
                let opensAgain = try Millis.fetchOne(db.cachedStatement(sql: """
                    SELECT MIN(partner_open_until) FROM events WHERE account = ? AND partner_open_until > ?
                    """), arguments: [account, now.millis])
                if let opensAgain { earliest = min(earliest ?? opensAgain, opensAgain) }
                guard let due = try Millis.fetchOne(db.cachedStatement(sql: """
                    SELECT next_attempt_at FROM events e WHERE account = ? AND state = 'pending' AND \(Self.keyIsFree)
                    ORDER BY next_attempt_at LIMIT 1
                    """), arguments: [account, now.millis]) else { continue }
                earliest = min(earliest ?? due, due)
            }
            return earliest.map(Date.init(millis:))
        }
    }

    /// When each account's partner requests were answered (or given up) since `since`, to seed
    /// the rate windows after a restart (interrupted ones included: the request may have reached
    /// the partner). The recorded time is never before the request's arrival at the partner.
    public func requestTimes(since: Date) async throws -> [String: [Date]] {
        try await read { db in
            var times: [String: [Date]] = [:]
            for row in try Row.fetchAll(db, sql: """
                    SELECT e.account, a.at FROM attempts a JOIN events e ON e.id = a.event_id WHERE a.at >= ? ORDER BY a.at
                    """, arguments: [since.millis]) {
                times[row[0], default: []].append(Date(millis: row[1]))
            }
            return times
        }
    }

    /// The gate's holds (`PartnerGate.holds`), replacing those stored: queued on the writer in
    /// call order, without waiting (the gate calls it while it decides).
    func saveHolds(_ holds: [String: Date]) {
        writeBatch({ db in try Self.replaceHolds(db, holds) }, then: { _ in })
    }

    /// `saveHolds`, waited for (a clock step's move: at the stop, before the outbox closes).
    func storeHolds(_ holds: [String: Date]) async throws {
        try await write { db in try Self.replaceHolds(db, holds) }
    }

    /// The stored holds become `holds` (in the caller's transaction).
    static func replaceHolds(_ db: Database, _ holds: [String: Date]) throws {
        try db.execute(sql: "DELETE FROM holds")
        for (scope, until) in holds {
            try db.execute(sql: "INSERT INTO holds (scope, until) VALUES (?, ?)", arguments: [scope, until.millis])
        }
    }

    /// The pending events of `accounts` that wait only because the partner refused their
    /// credentials (the retry after a 401 even with a freshly minted token, `unauthorized`, as
    /// their last attempt: not an event handed back since, whose hold is for another reason)
    /// are due now: those credentials changed. Returns how many, per account.
    public func releaseRefused(accounts: Set<String>, now: Date) async throws -> [String: Int] {
        guard !accounts.isEmpty else { return [:] }
        return try await write { db in
            self.quiet.clearAll()
            var released: [String: Int] = [:]
            for account in accounts {
                try db.execute(
                    sql: """
                        UPDATE events SET next_attempt_at = ?
                        WHERE account = ? AND state = 'pending' AND last_error = 'unauthorized' AND next_attempt_at > ?
                          AND (SELECT outcome FROM attempts WHERE event_id = events.id ORDER BY at DESC, rowid DESC LIMIT 1) = 'retry'
                        """,
                    arguments: [now.millis, account, now.millis])
                released[account] = db.changesCount
            }
            return released
        }
    }

    /// The holds the last run stored.
    public func loadHolds() async throws -> [String: Date] {
        try await read { db in
            var holds: [String: Date] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT scope, until FROM holds") { holds[row[0]] = Date(millis: row[1]) }
            return holds
        }
    }

    /// In-flight events, per account, that a crash left (recovered at start-up), to seed the windows.
    public func inFlightByAccount() async throws -> [String: Int] {
        try await read { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT account, COUNT(*) FROM events WHERE state = 'in_flight' GROUP BY account") {
                counts[row[0]] = row[1]
            }
            return counts
        }
    }
}
