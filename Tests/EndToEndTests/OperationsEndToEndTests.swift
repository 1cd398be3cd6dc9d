import CandidateRelay
import CandidateRelayTesting
import Foundation
import PartnerSimulator
import Testing

/// Logs, heartbeat, reload and personal-data hygiene, on the in-process relay.
@Suite struct OperationsEndToEndTests {
    @Test func noPersonalDataOrSecretReachesTheLogs() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.apiKey = "api-key-SECRET-1"
        sim.secret = "partner-SECRET-2"
        sim.faults.failNext = 1
        sim.faults.injectStatus = 503
        let relay = try await RelayHarness(simulator: sim) { config in
            config.logging.level = .trace
            config.logging.heartbeatSeconds = 0.1
        }
        let delivered = try #require(try await relay.post(Candidates.json(partnerID: "pii-1", resume: true)))
        let dead = try #require(try await relay.post(Candidates.json(position: "missing", partnerID: "pii-2")))
        _ = try await relay.waitFor(delivered, states: ["delivered"])
        _ = try await relay.waitFor(dead, states: ["dead"])
        _ = try await relay.client.post(#"{"first_name":"Zelda","email":"zelda.q@example.org"}"#)
        _ = try await relay.client.post(#"{"first_name": Zelda"#)
        _ = try await relay.post(Candidates.json(partnerID: "pii-1", resume: true), key: "k")
        _ = try await relay.post(Candidates.json(partnerID: "pii-1", resume: false), key: "k")
        await relay.stop()
        let text = relay.logs.text
        #expect(!text.isEmpty)
        for value in Candidates.personalValues + ["api-key-SECRET-1", "partner-SECRET-2", "Bearer ey"] {
            #expect(!text.contains(value), "log contains \(value)")
        }
        // Every line is JSON with the contract's leading fields.
        for line in relay.logs.all {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
            #expect(object["ts"] is String && object["level"] is String && object["event"] is String && object["msg"] is String)
        }
    }

    @Test func heartbeatCarriesCountsAndOldestPendingAge() async throws {
        let relay = try await RelayHarness { config in
            config.logging.heartbeatSeconds = 0.1
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "hb-1")))
        _ = try await relay.waitFor(id, states: ["delivered"])
        #expect(await eventually { relay.logs.events("relay.heartbeat").contains { $0["count_delivered"] as? Int == 1 } })
        let beat = try #require(relay.logs.events("relay.heartbeat").last)
        for key in ["count_pending", "count_in_flight", "count_delivered", "count_linked", "count_dead",
                    "oldest_pending_age_seconds", "delivered_since_last", "failures_since_last"] {
            #expect(beat[key] is NSNumber, "heartbeat lacks the number \(key)")
        }
        await relay.stop()
    }

    @Test func reloadAppliesAGoodConfigAndKeepsTheOldOneOnABadOne() async throws {
        let relay = try await RelayHarness()
        let dir = relay.directory
        let loader = try relay.writeReloadConfig("delivery: { workers: 2 }\nlogging: { level: warning, format: json }")
        #expect(await relay.application.reload(using: loader))
        #expect(!relay.logs.events("config.reloaded").isEmpty)
        // The harness listens on port 0; this file says 8088: that needs a restart.
        #expect((relay.logs.events("config.restart_needed").first?["keys"] as? String)?.hasPrefix("listen,") == true)
        // Level is now warning: an accepted webhook (info) is no longer logged.
        let before = relay.logs.events("ingest.accepted").count
        let id = try #require(try await relay.post(Candidates.json(partnerID: "rl-1")))
        _ = try await relay.waitFor(id, states: ["delivered"])
        #expect(relay.logs.events("ingest.accepted").count == before)

        try dir.write("config.yaml", "delivery: { workers: lots }\n")
        #expect(await relay.application.reload(using: loader) == false)
        let rejected = try #require(relay.logs.events("config.reload_rejected").first)
        #expect((rejected["problems"] as? String)?.contains("delivery.workers") == true)
        // The file stays as written: a restart would fail, and the log says so (once).
        #expect(relay.logs.events("config.file_invalid").count == 1)
        #expect(await relay.application.reload(using: loader) == false)
        #expect(relay.logs.events("config.file_invalid").count == 1)
        // Still delivering with the old configuration.
        let next = try #require(try await relay.post(Candidates.json(partnerID: "rl-2")))
        #expect(try await relay.waitFor(next, states: ["delivered"])?["state"] as? String == "delivered")
        await relay.stop()
    }

    @Test func reloadChangesTheNumberOfWorkers() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.latencyMs = 600
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.workers = 1
        }
        let loader = try relay.writeReloadConfig("delivery: { workers: 3 }")
        // One worker: two events go one after the other.
        let a = try #require(try await relay.post(Candidates.json(partnerID: "w-a")))
        let b = try #require(try await relay.post(Candidates.json(partnerID: "w-b")))
        _ = try await relay.waitFor(a, states: ["delivered"])
        _ = try await relay.waitFor(b, states: ["delivered"])
        let sequential = await relay.simulator.snapshot().requests.map(\.at)
        #expect(sequential[1].timeIntervalSince(sequential[0]) >= 0.5)

        #expect(await relay.application.reload(using: loader))
        // Three workers: three events are in flight together (each request takes 0.6 s).
        var ids: [String] = []
        for n in 0..<3 { ids.append(try #require(try await relay.post(Candidates.json(partnerID: "w-\(n)")))) }
        for id in ids { _ = try await relay.waitFor(id, states: ["delivered"]) }
        let parallel = await relay.simulator.snapshot().requests.map(\.at).suffix(3).sorted()
        #expect(parallel[2].timeIntervalSince(parallel[0]) < 0.5)
        await relay.stop()
    }

    /// The partner refused the account's secret; the operator fixes it and reloads. Its events
    /// go at once, not when the refusal's back-off (here a minute) ends.
    @Test func aReloadWithFixedCredentialsSendsAtOnce() async throws {
        let slowBackoff = "delivery: { backoff: { initial_seconds: 60, multiplier: 2, max_seconds: 3600 } }"
        let relay = try await RelayHarness { config in
            config.partner.auth = .comeetJWT(apiKey: Secret("demo-api-key", source: "test"), secret: Secret("a-wrong-secret", source: "test"),
                                             tokenTTLSeconds: 600)
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 60, multiplier: 2, maxSeconds: 3600)
        }
        let refused = try #require(try await relay.post(Candidates.json(partnerID: "cred-1")))
        #expect(await eventually { !relay.logs.events("auth.rejected").isEmpty })
        let waiting = try #require(try await relay.post(Candidates.json(partnerID: "cred-2")))

        // The same wrong credentials again: nothing moves.
        try relay.directory.write("comeet-api-key", "demo-api-key")
        try relay.directory.write("config.yaml", """
            storage: { path: \(relay.application.configuration.storage.path) }
            ingest: { signing_secrets_file: null, allow_unauthenticated: true }
            partner: { base_url: \(relay.simulator.baseURL) }
            \(slowBackoff)
            """)
        try relay.directory.write("comeet-secret", "a-wrong-secret")
        #expect(await relay.application.reload(using: ConfigurationLoader(configPath: relay.directory.file("config.yaml"), environment: [:])))
        try await Task.sleep(for: .milliseconds(300))
        #expect(relay.logs.events("auth.credentials_changed").isEmpty)
        #expect(try await relay.client.record(waiting)?["state"] as? String == "pending")

        // The right secret: both are delivered within seconds.
        #expect(await relay.application.reload(using: try relay.writeReloadConfig(slowBackoff)))
        for id in [refused, waiting] {
            #expect(try await relay.waitFor(id, states: ["delivered"], timeout: 10)?["state"] as? String == "delivered")
        }
        let changed = try #require(relay.logs.events("auth.credentials_changed").first)
        #expect(changed["account"] as? String == "default")
        #expect(changed["count_released"] as? Double == 1)  // the refused event's retry, pulled forward
        #expect(changed["back_off_was_until"] is String)

        // Reloaded again as it is now: the credentials are compared with those in use, not the
        // start's (wrong) ones, so the token is kept and nothing is said to have changed.
        let minted = relay.logs.events("auth.token_minted").count
        #expect(await relay.application.reload(using: try relay.writeReloadConfig(slowBackoff)))
        let later = try #require(try await relay.post(Candidates.json(partnerID: "cred-3")))
        #expect(try await relay.waitFor(later, states: ["delivered"])?["state"] as? String == "delivered")
        #expect(relay.logs.events("auth.token_minted").count == minted)
        #expect(relay.logs.events("auth.credentials_changed").count == 1)
        await relay.stop()
    }

    /// Writes the harness's config file for oauth2 against its simulator (the same credentials
    /// as the harness was given), plus `extra`, and returns a loader for it.
    static func writeOAuthConfig(_ relay: RelayHarness, _ extra: String = "") throws -> ConfigurationLoader {
        try relay.directory.write("oauth-client-secret", "demo-client-secret")
        try relay.directory.write("config.yaml", """
            storage: { path: \(relay.application.configuration.storage.path) }
            ingest: { signing_secrets_file: null, allow_unauthenticated: true }
            partner:
              base_url: \(relay.simulator.baseURL)
              auth: { mode: oauth2_client_credentials, token_url: \(relay.simulator.baseURL)/oauth/token, client_id: demo-client,
                      client_secret_file: oauth-client-secret, scope: candidates, client_auth: basic }
            \(extra)
            """)
        return ConfigurationLoader(configPath: relay.directory.file("config.yaml"), environment: [:])
    }

    /// The token endpoint was down, and the account waits out its back-off (a minute here).
    /// It is back; the operator reloads with the same config: the wait ends at once
    /// (`auth.backoff_lifted`), no attempt was used, and the event is delivered.
    @Test func aReloadEndsAWaitForATokenEndpointThatIsBack() async throws {
        var down = SimulatorFaults()
        down.tokenEndpointDown = true
        var sim = PartnerSimulatorConfiguration()
        sim.faults = down
        let relay = try await RelayHarness(simulator: sim) { config in
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: config.partner.baseURL + "/oauth/token", clientID: "demo-client",
                clientSecret: Secret("demo-client-secret", source: "test"), scope: "candidates", clientAuth: .basic))
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 60, multiplier: 2, maxSeconds: 3600)
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "outage-1")))
        #expect(await eventually { !relay.logs.events("auth.rejected").isEmpty })
        #expect(relay.logs.events("auth.rejected").first?["error"] as? String == "token_unavailable")
        await relay.simulator.setFaults(SimulatorFaults())
        #expect(await relay.application.reload(using: try Self.writeOAuthConfig(
            relay, "delivery: { backoff: { initial_seconds: 60, multiplier: 2, max_seconds: 3600 } }")))
        let record = try await relay.waitFor(id, states: ["delivered"], timeout: 10)
        #expect(record?["state"] as? String == "delivered")
        #expect(record?["attempts"] as? Int == 1)
        let lifted = try #require(relay.logs.events("auth.backoff_lifted").first)
        #expect(lifted["account"] as? String == "default")
        #expect(relay.logs.events("auth.credentials_changed").isEmpty)
        await relay.stop()
    }

    /// A reload that leaves an account's credentials as they were keeps its token: an OAuth2
    /// token endpoint that is down meanwhile stops nothing (each reload used to fetch anew).
    @Test func aReloadKeepsTheTokenOfUnchangedCredentials() async throws {
        let relay = try await RelayHarness { config in
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: config.partner.baseURL + "/oauth/token", clientID: "demo-client",
                clientSecret: Secret("demo-client-secret", source: "test"), scope: "candidates", clientAuth: .basic))
        }
        let before = try #require(try await relay.post(Candidates.json(partnerID: "tok-1")))
        _ = try await relay.waitFor(before, states: ["delivered"])
        #expect(await relay.simulator.snapshot().tokensIssued == 1)
        var faults = SimulatorFaults()
        faults.tokenEndpointDown = true
        await relay.simulator.setFaults(faults)
        let loader = try Self.writeOAuthConfig(relay)
        for _ in 0..<3 { #expect(await relay.application.reload(using: loader)) }
        let after = try #require(try await relay.post(Candidates.json(partnerID: "tok-2")))
        #expect(try await relay.waitFor(after, states: ["delivered"], timeout: 10)?["state"] as? String == "delivered")
        #expect(await relay.simulator.snapshot().tokenRequests == 1)
        #expect(relay.logs.events("auth.token_failed").isEmpty)
        await relay.stop()
    }
}
