import ArgumentParser
import CandidateRelay
import Foundation

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect the outbox and retry dead events.", subcommands: [List.self, Show.self, Retry.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List events, newest first.")
        @OptionGroup var options: ConfigOption
        @Option(help: "pending|in_flight|delivered|linked|dead") var state: String?
        @Option(help: "At most this many events.") var limit = 50
        @Option(help: "Only this account's events (default: every account).") var account: String?
        @Flag(help: "A JSON array of records.") var json = false

        func validate() throws {
            try AccountArgument.validate(account)
            // SQLite reads a negative LIMIT as none: `--limit -1` listed every event.
            guard limit > 0 else { throw ValidationError("--limit must be at least 1") }
            // Here, not in `run`: a ValidationError from `run` printed the top command's usage.
            if let state, EventState(rawValue: state) == nil {
                throw ValidationError("unknown state \(state): use pending|in_flight|delivered|linked|dead")
            }
        }

        func run() async throws {
            let filter = state.flatMap(EventState.init(rawValue:))
            let admin = AdminCommands(outbox: try await options.outbox(warningAbout: account).outbox)
            let listed = try await admin.listing(state: filter, account: account, limit: limit, json: json)
            Console.out(listed.text)
            // On stderr: the JSON on stdout stays what it was.
            if listed.more { Console.error("more events match: the newest \(limit) are shown (--limit N for more; `status` counts them all)") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One event with its attempt history.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "Event id.") var id: String
        @Flag(help: "The record plus `history` as JSON.") var json = false

        func run() async throws {
            let admin = AdminCommands(outbox: try await options.outbox())
            guard let text = try await admin.show(id: id, json: json) else {
                Console.error("no event \(id)")
                throw ExitCode(1)
            }
            Console.out(text)
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move dead events back to pending now (fresh attempt budget; the history stays).")
        @OptionGroup var options: ConfigOption
        @Argument(help: "Event ids.") var ids: [String] = []
        @Flag(name: .customLong("all-dead"), help: "Every dead event.") var allDead = false
        @Option(help: "With --all-dead: only this account's dead events.") var account: String?

        func validate() throws {
            if ids.isEmpty == !allDead { throw ValidationError("give event ids or --all-dead (not both)") }
            if account != nil && !allDead { throw ValidationError("--account goes with --all-dead (event ids name their events already)") }
            try AccountArgument.validate(account)
        }

        func run() async throws {
            let (config, outbox) = try await options.outbox(warningAbout: account)
            let admin = AdminCommands(outbox: outbox)
            let result = try await admin.retry(ids: allDead ? nil : ids, account: account,
                                               configuredAccounts: Set(config.accounts.map(\.id)))
            Console.out(result.text)
            if !result.allFound { throw ExitCode(1) }
        }
    }
}

struct Purge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase the payloads of terminal events (delivered, linked, dead) now, and delete expired records.")
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("older-than"), help: "e.g. 7d, 12h, 30m (default: storage.payload_retention_days).")
    var olderThan: String?
    @Option(help: "Only this account's events (default: every account).") var account: String?

    func validate() throws {
        try AccountArgument.validate(account)
        // Here, not in `run`: a ValidationError from `run` printed the top command's usage.
        if let olderThan, DurationParser.seconds(olderThan) == nil {
            throw ValidationError("bad duration \(olderThan): a number with s, m, h, d or w (or plain seconds), up to 100 years")
        }
    }

    func run() async throws {
        let (config, outbox) = try await options.outbox(warningAbout: account)
        let seconds = olderThan.flatMap(DurationParser.seconds) ?? config.storage.payloadRetentionDays * 86_400
        let admin = AdminCommands(outbox: outbox)
        Console.out(try await admin.purge(
            olderThanSeconds: seconds, recordRetentionDays: config.storage.recordRetentionDays, account: account))
    }
}

struct Forget: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase one candidate's personal data everywhere (GDPR erasure).",
        discussion: "Without --account, the candidate's events in every account are erased: an erasure request must not miss one.")
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("partner-candidate-id"), help: "The candidate's partner_candidate_id.") var partnerCandidateID: String
    @Option(help: "Only this account's events (default: every account).") var account: String?

    func validate() throws { try AccountArgument.validate(account) }

    func run() async throws {
        let admin = AdminCommands(outbox: try await options.outbox(warningAbout: account).outbox)
        Console.out(try await admin.forget(partnerCandidateID: partnerCandidateID, account: account))
    }
}

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A consistent copy of the outbox, safe while the daemon runs.")
    @OptionGroup var options: ConfigOption
    @Argument(help: "Destination file (must not exist).") var path: String

    func run() async throws {
        let outbox = try await options.outbox()
        // A file size limit (`ulimit -f`) would kill the process (SIGXFSZ) with the copy half
        // written; ignored, the write fails and the copy is removed like any failed one.
        signal(SIGXFSZ, SIG_IGN)
        do {
            try outbox.backup(to: path, created: removeOnSignal)
            // Whole now: a signal from here on must not delete it.
            backupInProgress[0] = nil
            backupInProgress[1] = nil
        } catch {
            Console.error("\(error)")
            throw ExitCode(1)
        }
        Console.out("backup written to \(path)")
    }
}

/// The backup being written and its journal, for the signal handlers of `removeOnSignal`: two
/// C strings in memory allocated once (a handler reads them through a plain pointer: no
/// reference counting, no exclusivity check on a Swift variable).
nonisolated(unsafe) private let backupInProgress: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = {
    let slots = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: 2)
    slots.initialize(repeating: nil, count: 2)
    return slots
}()

/// Ctrl-C, `timeout`'s SIGTERM or a hang-up while `backup` copies: the cut-off copy (candidates'
/// personal data, and no backup) goes with its journal, so that the retry needs no cleaning up;
/// then the signal ends the process as it would have (a shell script sees a Ctrl-C). Only
/// `unlink`, `signal` and `raise` run in the handler. (A SIGKILL cannot be caught: its copy stays.)
private func removeOnSignal(_ destination: String) {
    backupInProgress[0] = strdup(destination)
    backupInProgress[1] = strdup(destination + "-journal")
    for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
        signal(signalNumber) { received in
            if let path = backupInProgress[0] { unlink(path) }
            if let path = backupInProgress[1] { unlink(path) }
            signal(received, SIG_DFL)
            raise(received)
        }
    }
}

/// `--account ID` of the admin commands: any well-formed id, configured or not (the commands read
/// the file, and an account with no events shows zeros); a malformed one cannot exist.
enum AccountArgument {
    static func validate(_ account: String?) throws {
        if let account, !AccountConfiguration.isValidID(account) {
            throw ValidationError("--account \(account): an account id is [a-z0-9][a-z0-9_-]{0,62}")
        }
    }

    /// A warning on stderr when `account` names neither an account of the config nor any event
    /// in the outbox: likely a typo (found from outside: `forget --account acmee` answered "no
    /// event has partner_candidate_id ..." and exit 0, while `acme` held the candidate's data).
    /// The command still runs: an account removed from the config keeps its events, and those
    /// must stay reachable.
    static func noteUnknown(_ account: String?, config: RelayConfiguration, outbox: Outbox) async {
        guard let account, !config.accounts.contains(where: { $0.id == account }) else { return }
        guard let has = try? await outbox.hasEvents(account: account), !has else { return }
        Console.error("warning: --account \(account) is not in the config and has no event in the outbox (a typo?); "
            + "the config's accounts: \(config.accounts.map(\.id).joined(separator: ", "))")
    }
}
