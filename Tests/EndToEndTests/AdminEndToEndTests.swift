import CandidateRelay
import CandidateRelayTesting
import Foundation
import PartnerSimulator
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Every admin command against a live daemon, as an operator runs them.
@Suite(.serialized) struct AdminEndToEndTests {
    static func json(_ text: String) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    /// A simulator, a config directory naming it, and the daemon serving it, as an operator's
    /// machine has them (the caller cleans the directory up and stops the two).
    static func daemon(_ sim: PartnerSimulatorConfiguration = PartnerSimulatorConfiguration()) async throws
        -> (simulator: PartnerSimulator, dir: TemporaryDirectory, config: [String], daemon: RelayProcess, client: HTTPTestClient) {
        let simulator = PartnerSimulator(configuration: sim)
        _ = try await simulator.start()
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: simulator.baseURL)
        let config = ["--config", dir.file("config.yaml")]
        let daemon = try RelayProcess(arguments: ["serve"] + config)
        return (simulator, dir, config, daemon, HTTPTestClient(port: try await daemon.waitUntilReady()))
    }

    @Test func operatorFindsADeadLetterRetriesItAndSeesItDelivered() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 1
        sim.faults.injectStatus = 403
        let (simulator, dir, config, daemon, client) = try await Self.daemon(sim)
        defer { dir.cleanup() }
        let id = try #require(try await client.post(Candidates.json(partnerID: "adm-1")).json["id"] as? String)
        // The dead letter shows in the logs with its id...
        #expect(await eventually { daemon.events("delivery.dead").contains { $0["event_id"] as? String == id } })

        // ...and in status / events list / events show.
        let status = try await runRelay(["status", "--json"] + config)
        #expect(status.status == 0)
        let counts = (Self.json(status.output) as? [String: Any])?["counts"] as? [String: Int]
        #expect(counts == ["pending": 0, "in_flight": 0, "delivered": 0, "linked": 0, "dead": 1])
        let list = try await runRelay(["events", "list", "--state", "dead", "--json"] + config)
        #expect((Self.json(list.output) as? [[String: Any]])?.first?["id"] as? String == id)
        // The list shows the partner's code only (its message may repeat a submitted value); show has both.
        let listed = (Self.json(list.output) as? [[String: Any]])?.first?["last_error"] as? String
        let table = try await runRelay(["events", "list"] + config)
        #expect(table.output.contains(id) && table.output.contains("dead"))
        let show = try await runRelay(["events", "show", id, "--json"] + config)
        let shown = (Self.json(show.output) as? [String: Any])?["last_error"] as? String
        #expect(listed != nil && shown?.hasPrefix(listed! + ": ") == true, "\(String(describing: listed)) / \(String(describing: shown))")
        #expect(!table.output.contains(String(shown?.drop { $0 != ":" } ?? "")))
        let history = (Self.json(show.output) as? [String: Any])?["history"] as? [[String: Any]]
        #expect(history?.first?["outcome"] as? String == "dead")
        #expect(history?.first?["status"] as? Int == 403)
        #expect(!show.output.contains("Zelda"))

        // Retry: the daemon picks it up within 2 s and delivers it.
        let retry = try await runRelay(["events", "retry", id] + config)
        #expect(retry.status == 0)
        let delivered = try await eventually(timeout: 10) { try await client.record(id)?["state"] as? String == "delivered" }
        #expect(delivered)
        let after = try await runRelay(["events", "show", id, "--json"] + config)
        let outcomes = ((Self.json(after.output) as? [String: Any])?["history"] as? [[String: Any]])?.map { $0["outcome"] as? String }
        #expect(outcomes == ["dead", "delivered"])
        let unknown = try await runRelay(["events", "retry", "evt_nope"] + config)
        #expect(unknown.status == 1)

        // Backup while running, then purge and forget.
        let backup = try await runRelay(["backup", dir.file("backup.sqlite3")] + config)
        #expect(backup.status == 0)
        let copy = try Outbox(path: dir.file("backup.sqlite3"))
        #expect(try await copy.record(id: id)?.state == .delivered)
        let purge = try await runRelay(["purge", "--older-than", "0s"] + config)
        #expect(purge.output.contains("erased the payload of 1 terminal event(s)"))
        let forget = try await runRelay(["forget", "--partner-candidate-id", "adm-1"] + config)
        #expect(forget.output.contains(id))
        #expect(!forget.output.contains("warning: --account"))
        // A mistyped account still runs, but is pointed out (found from outside: a GDPR erasure
        // for `defualt` said "no event has ..." and exit 0, while `default` held the data).
        let typo = try await runRelay(["forget", "--partner-candidate-id", "adm-1", "--account", "defualt"] + config)
        #expect(typo.status == 0)
        #expect(typo.output.contains("warning: --account defualt is not in the config and has no event in the outbox (a typo?); "
            + "the config's accounts: default"), "\(typo.output)")
        #expect(!(try await runRelay(["status", "--account", "default"] + config)).output.contains("warning:"))
        // Admin commands need no credentials: an operator's shell has none.
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        let statusWithoutSecrets = try await runRelay(["status"] + config)
        #expect(statusWithoutSecrets.status == 0)
        #expect(statusWithoutSecrets.output.contains("delivered  1"))
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
        await simulator.stop()
    }

    /// `forget` against a running daemon leaves the erased values in none of the outbox's files:
    /// `secure_delete` zeroes them in the database file, and the WAL, which still held the
    /// pages as they were, is emptied. A clean stop leaves an empty WAL as well (SQLite's own
    /// checkpoint at close never ran: the last connection to close is a read-only one).
    @Test func forgetLeavesTheErasedValuesInNoFile() async throws {
        let (simulator, dir, config, daemon, client) = try await Self.daemon()
        defer { dir.cleanup() }
        let id = try #require(try await client.post(Candidates.json(partnerID: "gdpr-1")).json["id"] as? String)
        #expect(try await eventually(timeout: 10) { try await client.record(id)?["state"] as? String == "delivered" })
        let files = { () -> [String: Data] in
            let state = dir.file("state")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
            return Dictionary(uniqueKeysWithValues: names.compactMap { name in
                FileManager.default.contents(atPath: state + "/" + name).map { (name, $0) }
            })
        }
        let holding = { (contents: [String: Data]) -> [String] in
            contents.filter { _, data in Candidates.personalValues.prefix(5).contains { data.range(of: Data($0.utf8)) != nil } }
                .keys.sorted()
        }
        #expect(!holding(files()).isEmpty)  // the check below can see them
        let forget = try await runRelay(["forget", "--partner-candidate-id", "gdpr-1"] + config)
        #expect(forget.status == 0 && forget.output.contains(id) && !forget.output.contains("note:"))
        #expect(holding(files()) == [])
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
        #expect(files()["outbox.sqlite3-wal"].map(\.count) ?? 0 == 0)
        #expect(holding(files()) == [])
        await simulator.stop()
    }

    /// `--account` on every admin command that takes it, as an operator types them: against the
    /// file, with a config naming accounts whose secrets this shell does not have.
    @Test func adminCommandsKeepToOneAccount() async throws {
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9", extra: """
            accounts:
              acme: { api_key_file: acme-key }
              globex: { api_key_file: globex-key }
            """)
        defer { dir.cleanup() }
        let config = ["--config", dir.file("config.yaml")]
        // acme: a-dead, a-wait (candidate X, Y); globex: g-dead, g-wait (both X).
        let outbox = try Outbox(path: dir.file("state/outbox.sqlite3"))
        let start = Date().addingTimeInterval(-60)  // all of it in the past for the commands' clock
        for (offset, (id, account, partnerID)) in [("a-dead", "acme", "X"), ("g-dead", "globex", "X"), ("a-wait", "acme", "Y"),
                                                     ("g-wait", "globex", "X")].enumerated() {
            _ = try await outbox.accept(Submission(
                id: id, account: account, idempotencyKey: nil, bodySHA256: id, positionUID: "P", partnerCandidateID: partnerID,
                payload: Data(#"{"first_name":"Ada"}"#.utf8), receivedAt: start.addingTimeInterval(Double(offset) * 0.01)), maxBacklog: 10)
        }
        for account in ["acme", "globex"] {
            let claimed = try #require(try await outbox.claimNext(accounts: [account], now: start.addingTimeInterval(1), leaseSeconds: 60, maxAgeSeconds: 1000))
            try await outbox.complete(claimed, outcome: .dead(status: 404, error: "position_not_found"), now: start.addingTimeInterval(1), latencyMs: 1)
        }

        let status = try await runRelay(["status", "--json"] + config)
        #expect(status.status == 0, "\(status.output)")
        let accounts = (Self.json(status.output) as? [String: Any])?["accounts"] as? [String: [String: Any]]
        #expect(accounts?["acme"]?["counts"] as? [String: Int] == ["pending": 1, "in_flight": 0, "delivered": 0, "linked": 0, "dead": 1])
        #expect(accounts?["globex"]?["oldest_pending_age_seconds"] is Double)
        let acme = try await runRelay(["status", "--account", "acme", "--json"] + config)
        #expect(((Self.json(acme.output) as? [String: Any])?["accounts"] as? [String: Any]).map { Array($0.keys) } == ["acme"])
        let table = try await runRelay(["status"] + config)
        #expect(table.output.contains("ACCOUNT") && table.output.contains("globex"))
        let nobody = try await runRelay(["status", "--account", "nobody"] + config)
        #expect(nobody.status == 0 && nobody.output.contains("account:            nobody") && nobody.output.contains("pending    0"))
        #expect(try await runRelay(["status", "--account", "Acme!"] + config).status != 0)

        let list = try await runRelay(["events", "list", "--account", "globex", "--json"] + config)
        #expect((Self.json(list.output) as? [[String: Any]])?.map { $0["id"] as? String } == ["g-wait", "g-dead"])
        #expect(try await runRelay(["events", "list"] + config).output.contains("ACCOUNT"))
        let one = try await runRelay(["events", "list", "--limit", "1", "--json"] + config)
        // stdout's JSON, then stderr's note that more events match (the two are merged here).
        let lines = one.output.split(separator: "\n").map(String.init)
        #expect((lines.first.flatMap(Self.json) as? [[String: Any]])?.count == 1)
        #expect(lines.dropFirst() == ["more events match: the newest 1 are shown (--limit N for more; `status` counts them all)"])
        for limit in ["0", "-1"] {
            let refused = try await runRelay(["events", "list", "--limit=\(limit)"] + config)
            #expect(refused.status == 64 && refused.output.contains("--limit must be at least 1"))
        }

        #expect(try await runRelay(["events", "retry", "a-dead", "--account", "acme"] + config).status != 0)
        let retry = try await runRelay(["events", "retry", "--all-dead", "--account", "globex"] + config)
        #expect(retry.status == 0 && retry.output.contains("retried g-dead") && !retry.output.contains("a-dead"))
        #expect(try await outbox.record(id: "a-dead")?.state == .dead)

        let purge = try await runRelay(["purge", "--older-than", "0s", "--account", "acme"] + config)
        #expect(purge.output.contains("erased the payload of 1 terminal event(s)"))
        #expect(purge.output.contains("in account acme"))

        let help = try await runRelay(["forget", "--help"])
        #expect(help.output.contains("every account"))
        let forget = try await runRelay(["forget", "--partner-candidate-id", "X", "--account", "globex"] + config)
        #expect(forget.output.contains("g-dead") && forget.output.contains("g-wait") && !forget.output.contains("a-dead"))
        let everywhere = try await runRelay(["forget", "--partner-candidate-id", "X"] + config)
        #expect(everywhere.output.contains("in every account") && everywhere.output.contains("a-dead"))
        try outbox.close()
    }

    @Test func sighupReloadsAGoodConfigAndRefusesABadOne() async throws {
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9")
        defer { dir.cleanup() }
        let daemon = try RelayProcess(arguments: ["serve", "--config", dir.file("config.yaml")])
        let port = try await daemon.waitUntilReady()
        let original = try String(contentsOfFile: dir.file("config.yaml"), encoding: .utf8)
        try dir.write("config.yaml", original.replacingOccurrences(of: "level: debug", with: "level: info") + "\n# workers\n")
        daemon.signal(SIGHUP)
        #expect(await eventually { !daemon.events("config.reloaded").isEmpty })
        try dir.write("config.yaml", "delivery: { workers: -1 }\n")
        daemon.signal(SIGHUP)
        #expect(await eventually { !daemon.events("config.reload_rejected").isEmpty })
        // Still serving after the refused reload.
        let reply = try await HTTPTestClient(port: port).request("GET", "/readyz")
        #expect(reply.status == 200)
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
    }

    /// `candidate-relay reload` (systemd's ExecReload) returns only once the daemon applied the
    /// new config — every time — and fails, with the daemon's reasons, when it was refused.
    @Test func reloadCommandTellsTheTruth() async throws {
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9")
        defer { dir.cleanup() }
        let config = ["--config", dir.file("config.yaml")]
        let daemon = try RelayProcess(arguments: ["serve"] + config)
        let port = try await daemon.waitUntilReady()
        let original = try String(contentsOfFile: dir.file("config.yaml"), encoding: .utf8)
        for round in 1...5 {
            try dir.write("config.yaml", original + "\n# round \(round)\n")
            let reload = try await runRelay(["reload"] + config)
            #expect(reload.status == 0, "\(reload.output)")
            // Applied before the command returned: the log line is already there.
            #expect(daemon.events("config.reloaded").count == round)
            #expect(reload.output.contains("reloaded: the new configuration is live\n"), "\(reload.output)")
        }
        // A key that waits for a restart is named, not called live (exit 0: the rest is).
        try dir.write("config.yaml", original.replacingOccurrences(of: "http://127.0.0.1:9", with: "http://127.0.0.1:10"))
        let partly = try await runRelay(["reload"] + config)
        #expect(partly.status == 0, "\(partly.output)")
        #expect(partly.output.contains("live except partner.base_url, which the daemon keeps as it started until a restart"), "\(partly.output)")
        // A new storage.path waits for a restart too; the daemon named by pid (systemd's
        // ExecReload passes $MAINPID) answers beside the outbox it runs on.
        try dir.write("config.yaml", original.replacingOccurrences(of: "/state/outbox.sqlite3", with: "/moved/outbox.sqlite3"))
        let moved = try await runRelay(["reload", "--pid", String(daemon.process.processIdentifier), "--timeout", "10"] + config)
        #expect(moved.status == 0, "\(moved.output)")
        #expect(moved.output.contains("live except storage.path"), "\(moved.output)")
        // A pid that holds no outbox is not signalled (SIGHUP would end it).
        let bystander = Process()
        bystander.executableURL = URL(fileURLWithPath: "/bin/sleep")
        bystander.arguments = ["30"]
        try bystander.run()
        defer { bystander.terminate() }
        let wrongPid = try await runRelay(["reload", "--pid", String(bystander.processIdentifier), "--timeout", "2"] + config)
        #expect(wrongPid.status == 1, "\(wrongPid.output)")
        #expect(wrongPid.output.contains("holds no candidate-relay outbox"), "\(wrongPid.output)")
        #expect(bystander.isRunning)
        try dir.write("config.yaml", original.replacingOccurrences(of: "heartbeat_seconds: 1", with: "heartbeat_seconds: -1"))
        let refused = try await runRelay(["reload"] + config)
        #expect(refused.status == 1)
        #expect(refused.output.contains("reload refused"))
        #expect(refused.output.contains("heartbeat_seconds"))
        // Refused by the daemon itself (a secret it cannot read; the command does not read secrets).
        try dir.write("config.yaml", original)
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        let refusedByDaemon = try await runRelay(["reload"] + config)
        #expect(refusedByDaemon.status == 1)
        #expect(refusedByDaemon.output.contains("comeet-secret"))
        #expect(daemon.events("config.reload_rejected").count == 1)
        try dir.write("comeet-secret", "demo-secret\n")
        #expect(try await HTTPTestClient(port: port).request("GET", "/readyz").status == 200)
        // The `.lock` file deleted (the daemon survives it): systemd's `reload --pid` still
        // reaches the daemon, which holds the database file itself.
        try dir.write("config.yaml", original)
        try FileManager.default.removeItem(atPath: dir.file("state/outbox.sqlite3.lock"))
        let noLockFile = try await runRelay(["reload", "--pid", String(daemon.process.processIdentifier), "--timeout", "10"] + config)
        #expect(noLockFile.status == 0, "\(noLockFile.output)")
        // A report the daemon cannot write (as on a full disk; here its temporary file's path is
        // taken by a directory): applied, and the command says that it may have been, not only
        // that the daemon may hang (found from outside: "did not answer", the words for a hang).
        try FileManager.default.createDirectory(atPath: dir.file("state/outbox.sqlite3.reload.tmp"), withIntermediateDirectories: false)
        try dir.write("config.yaml", original + "\n# unanswered\n")
        let reloadedBefore = daemon.events("config.reloaded").count
        let unanswered = try await runRelay(["reload", "--pid", String(daemon.process.processIdentifier), "--timeout", "3"] + config)
        #expect(unanswered.status == 1, "\(unanswered.output)")
        #expect(unanswered.output.contains("wrote no answer to"), "\(unanswered.output)")
        #expect(unanswered.output.contains("may have handled the reload and been unable to write the answer"), "\(unanswered.output)")
        #expect(daemon.events("config.reloaded").count == reloadedBefore + 1)
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
        // No daemon: a clear failure, not a hang.
        try dir.write("config.yaml", original)
        let none = try await runRelay(["reload", "--timeout", "2"] + config)
        #expect(none.status == 1)
        #expect(none.output.contains("no daemon"))
        // A wait that is no number of seconds is refused before anything is signalled.
        for bad in ["inf", "nan", "1e300", "0", "1e-300"] {
            let refusedWait = try await runRelay(["reload", "--timeout", bad] + config)
            #expect(refusedWait.status == 64, "\(bad): \(refusedWait.output)")
            #expect(refusedWait.output.contains("--timeout must be"), "\(bad): \(refusedWait.output)")
        }
    }
}
