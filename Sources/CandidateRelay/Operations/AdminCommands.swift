import Foundation

/// The admin CLI's behaviour (CONTRACT section 2), working on the SQLite file directly while the
/// daemon runs. Each returns the text to print; `--json` output is for scripts.
public struct AdminCommands: Sendable {
    let outbox: Outbox
    let now: @Sendable () -> Date

    public init(outbox: Outbox, now: @escaping @Sendable () -> Date = Date.init) {
        self.outbox = outbox
        self.now = now
    }

    /// Counts per state, oldest pending age, last delivery and dead count; with several accounts
    /// (or one that is not `default`) a table per account follows. `account` shows that account
    /// alone (zeros when it has no events: the file is read without the config's accounts).
    public func status(json: Bool, account: String? = nil) async throws -> String {
        let status = try await outbox.status(now: now(), account: account)
        if json { return ContractJSON.string(status.jsonObject()) }
        var lines = account.map { ["account:            \($0)"] } ?? []
        lines += EventState.allCases.map { state in
            "\(state.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(status.counts[state] ?? 0)"
        }
        lines.append("oldest pending age: " + Self.age(status.oldestPendingAgeSeconds))
        lines.append("last delivery:      " + (status.lastDeliveryAt.map(Timestamp.string) ?? "-"))
        lines.append("dead:               \(status.counts[.dead] ?? 0)")
        if account == nil, !status.accounts.isEmpty, Array(status.accounts.keys) != [AccountConfiguration.defaultID] {
            lines.append("")
            lines.append(Self.table(
                header: ["ACCOUNT"] + EventState.allCases.map { $0.rawValue.uppercased() } + ["OLDEST_PENDING_AGE"],
                rows: status.accounts.keys.sorted().map { id in
                    let figures = status.accounts[id] ?? AccountStatus()
                    return [id] + EventState.allCases.map { String(figures.counts[$0] ?? 0) } + [Self.age(figures.oldestPendingAgeSeconds)]
                }))
        }
        return lines.joined(separator: "\n")
    }

    static func age(_ seconds: Double?) -> String {
        seconds.map { String(format: "%.1f s", $0) } ?? "-"
    }

    /// Newest first; `account` keeps to that account's events. `last_error` is the code only,
    /// as over HTTP: a list is pasted into tickets, and a partner's message may repeat a
    /// submitted value (`events show` gives one event's whole message).
    public func list(state: EventState?, account: String? = nil, limit: Int, json: Bool) async throws -> String {
        try await listing(state: state, account: account, limit: limit, json: json).text
    }

    /// `list`, and whether more events matched than `limit` (found from outside: a list cut at
    /// its default 50 said nothing, and a runbook's count of dead events read 50 for 60).
    public func listing(state: EventState?, account: String? = nil, limit: Int, json: Bool) async throws -> (text: String, more: Bool) {
        // One more, to know whether more match (`--limit` may be Int.max: "all"; found in review).
        let (onePast, overflow) = limit.addingReportingOverflow(1)
        var records = try await outbox.list(state: state, account: account, limit: overflow ? limit : onePast)
        let more = records.count > limit
        if more { records.removeLast() }
        return (render(records, json: json), more)
    }

    private func render(_ records: [EventRecord], json: Bool) -> String {
        if json { return ContractJSON.string(records.map { $0.jsonObject(includeMessages: false) }) }
        let header = ["ID", "ACCOUNT", "STATE", "ATTEMPTS", "POSITION", "PARTNER_CANDIDATE_ID", "CANDIDATE_UID", "RECEIVED", "LAST_ERROR"]
        let rows = records.map { r in
            [r.id, r.account, r.state.rawValue, String(r.attempts), r.positionUID, r.partnerCandidateID, r.candidateUID ?? "-",
             Timestamp.string(r.receivedAt), r.lastError.map(PartnerErrorBody.storedCode) ?? "-"]
        }
        return Self.table(header: header, rows: rows)
    }

    /// `nil` when the id is unknown.
    public func show(id: String, json: Bool) async throws -> String? {
        guard let record = try await outbox.record(id: id) else { return nil }
        let history = try await outbox.history(id: id)
        if json {
            var object = record.jsonObject()
            object["history"] = history.map { $0.jsonObject() }
            return ContractJSON.string(object)
        }
        var lines: [String] = []
        let object = record.jsonObject()
        for key in ["id", "account", "state", "attempts", "position_uid", "partner_candidate_id", "candidate_uid", "received_at",
                    "updated_at", "next_attempt_at", "last_status", "last_error"] {
            let value = object[key].map { $0 is NSNull ? "-" : "\($0)" } ?? "-"
            lines.append("\(key.padding(toLength: 21, withPad: " ", startingAt: 0)) \(Self.printable(value))")
        }
        lines.append("partner_response      \(Self.printable(record.partnerResponse ?? "-"))")
        lines.append("")
        lines.append("history:")
        lines.append(Self.table(
            header: ["ATTEMPT", "AT", "OUTCOME", "STATUS", "ERROR", "LATENCY_MS"],
            rows: history.map { [String($0.attempt), Timestamp.string($0.at), $0.outcome, $0.status.map(String.init) ?? "-",
                                 $0.error ?? "-", $0.latencyMs.map(String.init) ?? "-"] }))
        return lines.joined(separator: "\n")
    }

    /// `ids == nil`: every dead event (of `account` only, when given).
    /// `configuredAccounts`: the accounts the config names, when known; dead events of any other
    /// account are left dead and named (found from outside: an account a reload had removed got
    /// its dead events back as pending, which the daemon never sends, and which no retention
    /// erases, as they are not terminal).
    public func retry(ids: [String]?, account: String? = nil, configuredAccounts: Set<String>? = nil,
                      pause: MaintenancePause = .shareTheWriter) async throws -> (text: String, allFound: Bool) {
        let result = try await outbox.retry(ids: ids, account: account, onlyAccounts: configuredAccounts, now: now(), pause: pause)
        var lines = result.retried.map { id in
            guard let until = result.heldUntil[id] else { return "retried \(id)" }
            return "retried \(id) (sent at \(Timestamp.string(until)) at the earliest: its last request, given up without an answer, "
                + "may still be at work at the partner until then)"
        }
        guard ids != nil else {
            // `--all-dead` named the events it found dead with their payload; one that is not
            // by its turn was changed meanwhile (retried by another command, erased by a purge
            // or a `forget`): not a failure of this command (found from outside: two retries
            // at once, or one beside a purge, exited 1 with every such event "skipped").
            if !result.skipped.isEmpty {
                lines.append("\(result.skipped.count) event(s) found dead were no longer dead with their payload by their turn "
                    + "(another command retried, purged or erased them meanwhile): left as they are")
            }
            lines.append("\(result.retried.count) event(s) moved back to pending" + Self.scope(account))
            if !result.outsideCounts.isEmpty {
                let names = result.outsideCounts.keys.sorted().map(Self.printable).joined(separator: ", ")
                lines.append("\(result.outsideCounts.values.reduce(0, +)) dead event(s) of account(s) the config does not name (\(names)) "
                    + "were left dead: the daemon sends nothing for an account it does not know. Configure the account again "
                    + "to retry them, or erase their personal data with `purge --account ID --older-than 0s`")
            }
            // Found from outside: dead events a purge had erased were left out without a word.
            let unsendable = try await outbox.deadWithoutPayload(account: account)
            if unsendable > 0 {
                lines.append("\(unsendable) dead event(s) have no payload any more (erased by retention or purge) and cannot "
                    + "be resent: their senders must send them again as new webhooks, with a new webhook-id or Idempotency-Key "
                    + "(a replay with the same key is answered 200 as a duplicate and stores nothing; `events list --state dead`)")
            }
            return (lines.joined(separator: "\n"), true)
        }
        lines += result.outsideIDs.map { "skipped \($0.id) (its account \(Self.printable($0.account)) is not in the config: the daemon would not send it)" }
        lines += result.skipped.map { "skipped \($0) (unknown, not dead, or its payload was erased)" }
        lines.append("\(result.retried.count) event(s) moved back to pending" + Self.scope(account))
        return (lines.joined(separator: "\n"), result.skipped.isEmpty && result.outsideIDs.isEmpty)
    }

    /// `account` keeps both the erasure and the deletion to that account's events.
    public func purge(olderThanSeconds: Double, recordRetentionDays: Double, account: String? = nil) async throws -> String {
        let current = now()
        let result = try await outbox.prune(
            payloadBefore: current.addingTimeInterval(-olderThanSeconds),
            recordBefore: current.addingTimeInterval(-recordRetentionDays * 86_400),
            includeDead: true, account: account, now: current, pause: .shareTheWriter)
        return "erased the payload of \(result.erased) terminal event(s); deleted \(result.deleted) expired record(s)" + Self.scope(account)
            + (result.erased > 0 ? await walNote() : "")
    }

    /// After an erasure: the WAL emptied (the erased values' older copies with it), or why not.
    private func walNote() async -> String {
        await outbox.truncateWAL() ? "" : "\nnote: the outbox's write-ahead log could not be emptied (a reader or a writer held it: the daemon "
            + "under load, or another process reading the file); it may still hold older copies of the erased data until SQLite reuses it: "
            + "run the command again"
    }

    /// A GDPR erasure: every account's events for the id unless `account` names one.
    public func forget(partnerCandidateID: String, account: String? = nil) async throws -> String {
        let report = try await outbox.forget(partnerCandidateID: partnerCandidateID, account: account, now: now())
        if report.events.isEmpty { return "no event has partner_candidate_id \(Self.printable(partnerCandidateID))" + Self.scope(account) }
        var lines = ["erased the personal data (payload and partner answer) of \(report.events.count) event(s)"
                     + (account == nil ? " in every account" : Self.scope(account)) + ":"]
        lines += report.events.map { "  \($0)" }
        if report.pendingStopped > 0 { lines.append("\(report.pendingStopped) undelivered event(s) can no longer be sent and are now dead (last_error: erased)") }
        // What the operator of an erasure must still do at the partner (found from outside: an
        // event in flight was delivered seconds after a `forget` that said nothing of it).
        if report.inFlight > 0 {
            lines.append("\(report.inFlight) event(s) were being sent to the partner: a request already out may still create the candidate there "
                + "(`events show ID` gives its outcome within partner.timeout_seconds: delivered or linked with its candidate_uid, "
                + "or dead `erased`, which may also mean the request timed out or failed after creating it: check the partner)")
        }
        if report.atPartner > 0 {
            lines.append("\(report.atPartner) event(s) had been delivered or linked: the partner holds this candidate "
                + "(candidate_uid in `events show ID`); erase it there too")
        }
        return lines.joined(separator: "\n") + (await walNote())
    }

    /// " in account X" when a command was kept to one account.
    static func scope(_ account: String?) -> String {
        account.map { " in account \($0)" } ?? ""
    }

    /// A value as a terminal may show it: control characters (C0, DEL, C1), line and paragraph
    /// separators and bidi controls written as `\u{XXXX}`. A sender's value reached the
    /// operator's terminal raw: U+009B (an 8-bit CSI) made escape sequences of it.
    static func printable(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { ContractJSON.mustEscape($0.value) }) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            if ContractJSON.mustEscape(scalar.value) { result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}" } else { result.unicodeScalars.append(scalar) }
        }
        return result
    }

    static func table(header: [String], rows: [[String]]) -> String {
        let rows = rows.map { $0.map(printable) }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

/// Durations for `purge --older-than`: `30s`, `15m`, `12h`, `7d`, or plain seconds, at most
/// `maxSeconds` (`inf`, `1e400` or `999999999999w` crashed the command converting the cut-off
/// date to milliseconds).
public enum DurationParser {
    /// 100 years: older than anything the outbox can hold.
    public static let maxSeconds: Double = 100 * 366 * 86_400

    public static func seconds(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]
        var number = Substring(text)
        var unit = 1.0
        if let last = text.last, let scale = units[last] {
            number = number.dropLast()
            unit = scale
        }
        // Digits with at most one decimal point: Swift's Double also reads `0x10` (16), `1e3`
        // and `+5`, which an operator did not mean as durations (found from outside).
        let digits = number.filter { $0 != "." }
        guard !digits.isEmpty, digits.allSatisfy({ ("0"..."9").contains($0) }), number.count - digits.count <= 1,
              let value = Double(number) else { return nil }
        let seconds = value * unit
        return seconds.isFinite && seconds >= 0 && seconds <= maxSeconds ? seconds : nil
    }
}
