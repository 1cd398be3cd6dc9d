import CandidateRelay
import CandidateRelayTesting
import Crypto
import Foundation
import PartnerSimulator
import Testing

/// The whole relay in-process against the simulator on port 0, one scenario per test.
@Suite struct DeliveryEndToEndTests {
    @Test func deliversAndKeepsThePartnersCandidate() async throws {
        let relay = try await RelayHarness()
        let id = try #require(try await relay.post(Candidates.json(partnerID: "c-1")))
        let record = try #require(try await relay.waitFor(id, states: ["delivered"]))
        let snapshot = await relay.simulator.snapshot()
        #expect(snapshot.createdCount(positionUID: "11.11", partnerCandidateID: "c-1") == 1)
        let created = try #require(snapshot.candidates.first)
        #expect(record["candidate_uid"] as? String == created.uid)
        #expect(record["attempts"] as? Int == 1)
        #expect((record["partner_response"] as? [String: Any])?["uid"] as? String == created.uid)
        let request = try #require(snapshot.requests.first)
        #expect(request.idempotencyKey == id)
        #expect(request.userAgent?.hasPrefix("candidate-relay/") == true)
        #expect(request.acceptEncoding == "identity")  // the relay decodes no gzip answer
        #expect(!relay.logs.events("delivery.succeeded").isEmpty)
        #expect(!relay.logs.events("auth.token_minted").isEmpty)
        await relay.stop()
    }

    /// A candidate with files (3 MB of JSON: stored and read back with SQLite's blob I/O, past
    /// the 64 KiB of the ordinary path) reaches the partner byte for byte, and a small one too.
    @Test func largeAndSmallBodiesReachThePartnerByteForByte() async throws {
        let relay = try await RelayHarness()
        var generator = SystemRandomNumberGenerator()
        let file = { (index: Int) in
            let bytes = Data((0..<750_000).map { _ in UInt8.random(in: 0...255, using: &generator) })
            return #"{"name":"portfolio-\#(index).pdf","file":"\#(bytes.base64EncodedString())"}"#
        }
        let large = #"{"position_uid":"11.11","partner_candidate_id":"c-big","first_name":"Ada","last_name":"Example","#
            + #""email":"ada@example.org","files":["# + (0..<3).map(file).joined(separator: ",") + "]}"
        let small = Candidates.json(partnerID: "c-small")
        for (body, partnerID) in [(large, "c-big"), (small, "c-small")] {
            let id = try #require(try await relay.post(body))
            _ = try #require(try await relay.waitFor(id, states: ["delivered"]))
            let request = try #require(await relay.simulator.snapshot().requests.first { $0.partnerCandidateID == partnerID })
            let sent = SHA256.hash(data: Data(body.utf8)).map { String(format: "%02x", $0) }.joined()
            #expect(request.bodySHA256 == sent)
        }
        #expect(large.utf8.count > 3_000_000)
        await relay.stop()
    }

    /// One worker, a partner that answers after `latencyMs` (with `retryAfter` on injected
    /// answers), and three candidates posted: while one request is out, the worker claims the
    /// next event ahead.
    static func oneSlowWorker(latencyMs: Int, retryAfter: String? = nil, shutdownGraceSeconds: Double = 2,
                              prefix: String) async throws -> (RelayHarness, [String]) {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.latencyMs = latencyMs
        sim.faults.retryAfter = retryAfter
        let relay = try await RelayHarness(simulator: sim) {
            $0.delivery.workers = 1
            $0.delivery.shutdownGraceSeconds = shutdownGraceSeconds
        }
        var ids: [String] = []
        for n in 0..<3 { ids.append(try #require(try await relay.post(Candidates.json(partnerID: "\(prefix)-\(n)")))) }
        return (relay, ids)
    }

    /// With every worker busy, a worker claims its next event while its request is in flight;
    /// at shutdown that event, never sent, goes back to pending without using an attempt.
    @Test func aPrefetchedEventIsHandedBackAtShutdown() async throws {
        // The stop must come while the first request is still out: with 0.8 s, a loaded machine
        // (the whole suite in parallel) once saw the two in flight too late, the first answer came
        // before the stop, and the event claimed ahead was sent (no `delivery.interrupted`).
        let (relay, ids) = try await Self.oneSlowWorker(latencyMs: 3000, shutdownGraceSeconds: 6, prefix: "pf")
        // The first is being sent and the second claimed meanwhile: two in flight.
        let prefetched = try await eventually {
            var count = 0
            for id in ids where try await relay.client.record(id)?["state"] as? String == "in_flight" { count += 1 }
            return count == 2
        }
        #expect(prefetched)
        // The grace period (6 s) lets the 3 s request finish; the claim made ahead meanwhile is
        // handed back unsent.
        await relay.shutdownAndWait()
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        var records: [String: EventRecord] = [:]
        for id in ids {
            let record: EventRecord = try #require(await outbox.record(id: id))
            records[id] = record
        }
        let delivered = records.values.filter { $0.state == .delivered }
        #expect(delivered.allSatisfy { $0.attempts == 1 })
        #expect(await relay.simulator.snapshot().requests.count == delivered.count)
        // The event claimed while the last request was in flight went back, never sent.
        let interrupted = relay.logs.events("delivery.interrupted")
        #expect(interrupted.count == 1)
        let handedBackID = try #require(interrupted.first?["event_id"] as? String)
        let handedBack = try #require(records[handedBackID])
        #expect(handedBack.state == .pending && handedBack.attempts == 0)
        #expect(records.values.allSatisfy { $0.state == .delivered || ($0.state == .pending && $0.attempts == 0) })
        await relay.stop()
    }

    /// An event claimed ahead whose account is paused (a 429 with Retry-After on the request in
    /// flight) before it is sent: back to pending with no attempt used and no history row — a row
    /// would count as a request in the rate windows rebuilt at the next start.
    @Test func anEventNotSentBecauseOfAPauseLeavesNoHistory() async throws {
        // Retry-After on injected answers only: none yet.
        let (relay, ids) = try await Self.oneSlowWorker(latencyMs: 2000, retryAfter: "60", prefix: "pause")
        // The first goes alone; once it is delivered the worker sends the second and claims
        // the third ahead. The simulator decides its answer after the latency (2 s: time to
        // see the first delivered and change the faults, even on a loaded machine): the
        // second's is a 429 with Retry-After.
        _ = try #require(try await relay.waitFor(ids[0], states: ["delivered"]))
        var faults = SimulatorFaults()
        faults.latencyMs = 2000
        faults.retryAfter = "60"
        faults.failNext = 1
        faults.injectStatus = 429
        await relay.simulator.setFaults(faults)
        let claimedAhead = try await eventually {
            try await relay.client.record(ids[2])?["state"] as? String == "in_flight"
        }
        #expect(claimedAhead)
        let retried = try #require(try await relay.waitFor(ids[1], states: ["pending"]))
        #expect(retried["last_status"] as? Int == 429)
        let handedBack = try await eventually { try await relay.client.record(ids[2])?["state"] as? String == "pending" }
        #expect(handedBack)
        await relay.shutdownAndWait()
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        let record = try #require(try await outbox.record(id: ids[2]))
        #expect(record.state == .pending && record.attempts == 0)
        #expect(try await outbox.history(id: ids[2]).isEmpty)
        #expect(try await outbox.history(id: ids[1]).map(\.outcome) == ["retry"])
        #expect(await relay.simulator.snapshot().requests.count == 2)
        await relay.stop()
    }

    /// Review: an event `forget` erased while its request was out, then refused for good, is
    /// recorded `erased`; its `delivery.dead` line said the partner's code, which sent the
    /// operator to fix a cause and retry an event no retry can send.
    @Test func anEventForgottenWhileItsRequestIsOutThenRefusedIsLoggedErased() async throws {
        let relay = try await RelayHarness()
        var faults = SimulatorFaults()
        faults.latencyMs = 1500
        faults.failNext = 1
        faults.injectStatus = 422
        await relay.simulator.setFaults(faults)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "fg-1")))
        let out = try await eventually { try await relay.client.record(id)?["state"] as? String == "in_flight" }
        #expect(out)
        let admin = try Outbox(path: relay.application.configuration.storage.path)
        #expect(try await admin.forget(partnerCandidateID: "fg-1", now: Date()).inFlight == 1)
        let dead = try #require(try await relay.waitFor(id, states: ["dead"]))
        #expect(dead["last_error"] as? String == "erased")
        #expect(await eventually { relay.logs.events("delivery.dead").first?["error"] as? String == "erased" })
        #expect(try await admin.history(id: id).map(\.status) == [422])  // the partner's answer stays in the history
        await relay.stop()
    }

    /// `forget` (another process) while an event is claimed ahead behind another request: the
    /// payload already read for it must not reach the partner; the event goes dead instead.
    @Test func anEventClaimedAheadIsNotSentAfterForget() async throws {
        let (relay, ids) = try await Self.oneSlowWorker(latencyMs: 2000, prefix: "erase")
        // The first goes alone; then the second is sent and the third claimed ahead, and the
        // forget runs within the second's 2 s.
        _ = try #require(try await relay.waitFor(ids[0], states: ["delivered"]))
        let claimedAhead = try await eventually {
            try await relay.client.record(ids[2])?["state"] as? String == "in_flight"
        }
        #expect(claimedAhead)
        let admin = try Outbox(path: relay.application.configuration.storage.path)
        let report = try await admin.forget(partnerCandidateID: "erase-2", now: Date())
        #expect(report.events == [ids[2]] && report.pendingStopped == 0)
        let dead = try #require(try await relay.waitFor(ids[2], states: ["dead"]))
        #expect(dead["last_error"] as? String == "erased")
        // Not counted among the dead events whose senders must send them again.
        #expect(try await admin.deadWithoutPayload() == 0)
        _ = try #require(try await relay.waitFor(ids[1], states: ["delivered"]))
        let sent = await relay.simulator.snapshot().requests.map(\.partnerCandidateID)
        #expect(sent == ["erase-0", "erase-1"])
        #expect(try await admin.history(id: ids[2]).isEmpty)
        await relay.stop()
    }

    @Test func conflictBecomesALinkToTheExistingCandidate() async throws {
        let relay = try await RelayHarness()
        let first = try #require(try await relay.post(Candidates.json(partnerID: "dup"), key: "k1"))
        _ = try await relay.waitFor(first, states: ["delivered"])
        let second = try #require(try await relay.post(Candidates.json(partnerID: "dup"), key: "k2"))
        let linked = try #require(try await relay.waitFor(second, states: ["linked"]))
        let delivered = try #require(try await relay.client.record(first))
        #expect(linked["candidate_uid"] as? String == delivered["candidate_uid"] as? String)
        #expect(linked["last_status"] as? Int == 409)
        #expect(await relay.simulator.snapshot().createdCount(positionUID: "11.11", partnerCandidateID: "dup") == 1)
        #expect(!relay.logs.events("delivery.linked").isEmpty)
        await relay.stop()
    }

    @Test func serverErrorsThreeTimesThenSuccess() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 3
        sim.faults.injectStatus = 503
        let relay = try await RelayHarness(simulator: sim)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "c-5xx")))
        let record = try #require(try await relay.waitFor(id, states: ["delivered", "dead"]))
        #expect(record["state"] as? String == "delivered")
        #expect(record["attempts"] as? Int == 4)
        #expect(relay.logs.events("delivery.retry_scheduled").count == 3)
        await relay.stop()
    }

    @Test func clientErrorIsDeadWithThePartnersCode() async throws {
        let relay = try await RelayHarness()
        let id = try #require(try await relay.post(Candidates.json(position: "missing", partnerID: "c-404")))
        let record = try #require(try await relay.waitFor(id, states: ["dead"]))
        #expect(record["last_status"] as? Int == 404)
        // Over HTTP the code only; the partner's message is for the admin CLI.
        #expect(record["last_error"] as? String == "position_not_found")
        #expect(record["attempts"] as? Int == 1)
        let dead = try #require(relay.logs.events("delivery.dead").first)
        #expect(dead["error"] as? String == "position_not_found")
        await relay.stop()
    }

    @Test func ageBudgetSpentIsDeadAndLogged() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.errorRate = 1
        sim.faults.injectStatus = 503
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.maxAgeSeconds = 0.3
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "age-1")))
        let record = try #require(try await relay.waitFor(id, states: ["dead"]))
        #expect((record["last_error"] as? String)?.contains("max_age_exceeded") == true)
        #expect(relay.logs.events("delivery.dead").contains { $0["event_id"] as? String == id })
        await relay.stop()
    }

    @Test func attemptsExhaustedIsDead() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.errorRate = 1
        sim.faults.injectStatus = 500
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.maxAttempts = 3
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "att-1")))
        let record = try #require(try await relay.waitFor(id, states: ["dead"]))
        #expect(record["attempts"] as? Int == 3)
        #expect(record["last_error"] as? String == "attempts_exhausted")
        await relay.stop()
    }

    @Test func badRequestIsDeadAtOnce() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 1
        sim.faults.injectStatus = 400
        let relay = try await RelayHarness(simulator: sim)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "c-400")))
        let record = try #require(try await relay.waitFor(id, states: ["dead"]))
        #expect(record["last_status"] as? Int == 400)
        #expect(record["attempts"] as? Int == 1)
        await relay.stop()
    }

    @Test func tooManyRequestsWithRetryAfterPausesEveryWorker() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 1
        sim.faults.injectStatus = 429
        sim.faults.retryAfter = "1"
        // Retry-After is capped at the longest backoff; keep that above 1 s here.
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.backoff.maxSeconds = 5
        }
        let first = try #require(try await relay.post(Candidates.json(partnerID: "r-1")))
        // Once the relay has seen the 429 (it logs after pausing), a new event must wait too.
        _ = await eventually { !relay.logs.events("partner.rate_limited").isEmpty }
        let second = try #require(try await relay.post(Candidates.json(partnerID: "r-2")))
        _ = try await relay.waitFor(first, states: ["delivered"])
        _ = try await relay.waitFor(second, states: ["delivered"])
        let requests = await relay.simulator.snapshot().requests
        #expect(requests.count == 3)
        #expect(requests[0].status == 429)
        // Neither event, not only the one that got the 429, went out before Retry-After elapsed.
        for later in requests.dropFirst() {
            #expect(later.at.timeIntervalSince(requests[0].at) >= 0.95)
        }
        #expect(!relay.logs.events("partner.rate_limited").isEmpty)
        #expect(!relay.logs.events("partner.paused").isEmpty)
        await relay.stop()
    }

    @Test func tooManyRequestsWithoutRetryAfterBacksOff() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 2
        sim.faults.injectStatus = 429
        let relay = try await RelayHarness(simulator: sim)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "r-3")))
        let record = try #require(try await relay.waitFor(id, states: ["delivered"]))
        #expect(record["attempts"] as? Int == 3)
        await relay.stop()
    }

    @Test func tokenRejectedMidRunIsMintedAfreshWithoutUsingAnAttempt() async throws {
        let relay = try await RelayHarness()
        let first = try #require(try await relay.post(Candidates.json(partnerID: "t-1")))
        _ = try await relay.waitFor(first, states: ["delivered"])
        // The partner now refuses tokens first seen more than 0.2 s ago: the cached one is stale.
        // (Wait past the next whole second: a token minted in the same second as the old one,
        // with the same `exp`, would be the same token.)
        var faults = SimulatorFaults()
        faults.tokenMaxAgeSeconds = 0.2
        await relay.simulator.setFaults(faults)
        try await Task.sleep(for: .milliseconds(1100))
        let second = try #require(try await relay.post(Candidates.json(partnerID: "t-2")))
        let record = try #require(try await relay.waitFor(second, states: ["delivered"]))
        #expect(record["attempts"] as? Int == 1)
        #expect(relay.logs.events("auth.token_minted").count == 2)
        #expect(relay.logs.events("auth.token_rejected").count == 1)
        let statuses = await relay.simulator.snapshot().requests.map(\.status)
        #expect(statuses == [201, 401, 201])
        await relay.stop()
    }

    /// A token endpoint that is down (or refuses the client: a revoked secret) sent nothing to
    /// the partner: no event uses an attempt, and the account waits with a back-off, instead of
    /// each event asking the token endpoint in turn and spending its budget (with
    /// `max_attempts: 2` the whole backlog went dead in a second).
    @Test func oauthTokenEndpointDownForAWhileHoldsTheAccountAndUsesNoAttempt() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.tokenEndpointDown = true
        let relay = try await RelayHarness(simulator: sim) { config in
            let url = config.partner.baseURL
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: url + "/oauth/token", clientID: sim.oauthClientID,
                clientSecret: Secret(sim.oauthClientSecret, source: "test"), scope: "candidates", clientAuth: .basic))
            config.delivery.maxAttempts = 2
        }
        var ids: [String] = []
        for n in 0..<5 { ids.append(try #require(try await relay.post(Candidates.json(partnerID: "o-\(n)")))) }
        // The back-off doubles from 0.05 s to its 0.2 s cap: a handful of waits in a second.
        #expect(await eventually { relay.logs.events("auth.rejected").count >= 3 })
        try await Task.sleep(for: .milliseconds(500))
        for id in ids {
            let record = try #require(try await relay.client.record(id))
            #expect(["pending", "in_flight"].contains(record["state"] as? String), "\(record)")
        }
        let rejected = try #require(relay.logs.events("auth.rejected").first)
        #expect(rejected["error"] as? String == "token_unavailable")
        #expect(rejected["account"] as? String == "default")
        #expect(relay.logs.events("auth.token_failed").first?["error"] as? String == "token_endpoint_http_503")
        // The endpoint was asked about once per wait, not once per event and attempt.
        let asked = await relay.simulator.snapshot().tokenRequests
        #expect(asked <= relay.logs.events("auth.rejected").count + 16, "\(asked) token requests")
        await relay.simulator.setFaults(SimulatorFaults())
        for id in ids {
            let record = try #require(try await relay.waitFor(id, states: ["delivered", "dead"]))
            #expect(record["state"] as? String == "delivered")
            #expect(record["attempts"] as? Int == 1)
        }
        #expect(relay.logs.events("delivery.retry_scheduled").isEmpty)
        #expect(relay.logs.events("delivery.dead").isEmpty)
        #expect(await relay.simulator.snapshot().tokensIssued == 1)
        // As for the partner's requests: the relay decodes no gzip token answer either.
        #expect(await relay.simulator.snapshot().tokenAcceptEncoding == "identity")
        await relay.stop()
    }

    /// The clock hint of a refusal (`partner_clock_offset_seconds`) is for the tokens the relay
    /// mints itself, whose `iat`/`exp` come from its clock. An OAuth2 token's times are its
    /// endpoint's: a partner an hour off refusing one says nothing of the relay's clock.
    @Test func anOAuth2RefusalSaysNothingOfTheRelaysClock() async throws {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let body = #"{"status":401,"error":"unauthorized","message":"invalid token"}"#
        let partner = try RawPartner(answer: "HTTP/1.1 401 Unauthorized\r\nDate: \(formatter.string(from: Date().addingTimeInterval(3600)))\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        defer { partner.stop() }
        let sim = PartnerSimulatorConfiguration()
        let relay = try await RelayHarness(simulator: sim) { config in
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: config.partner.baseURL + "/oauth/token", clientID: sim.oauthClientID,
                clientSecret: Secret(sim.oauthClientSecret, source: "test"), scope: "candidates", clientAuth: .basic))
            config.partner.baseURL = "http://127.0.0.1:\(partner.port)"
        }
        _ = try #require(try await relay.post(Candidates.json(partnerID: "oauth-clock")))
        #expect(await eventually { !relay.logs.events("auth.rejected").isEmpty })
        let rejected = try #require(relay.logs.events("auth.rejected").first)
        #expect(rejected["partner_clock_offset_seconds"] == nil, "\(rejected)")
        #expect((rejected["msg"] as? String)?.contains("clock") == false, "\(rejected)")
        #expect(await relay.simulator.snapshot().tokensIssued >= 1)  // the refusal was of a token the endpoint gave
        await relay.stop()
    }

    /// Found from outside: the token endpoint's `Retry-After` was ignored, and the account's
    /// back-off asked it again at its first steps. Now the account waits as long as it asked
    /// (capped at `backoff.max_seconds`, 30 s here), then asks once more.
    @Test func theTokenEndpointsRetryAfterIsWaitedOut() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.tokenEndpointDown = true
        sim.faults.retryAfter = "2"
        let relay = try await RelayHarness(simulator: sim) { config in
            let url = config.partner.baseURL
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: url + "/oauth/token", clientID: sim.oauthClientID,
                clientSecret: Secret(sim.oauthClientSecret, source: "test"), scope: "candidates", clientAuth: .basic))
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 0.05, multiplier: 2, maxSeconds: 30)
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "ra-0")))
        #expect(await eventually { relay.logs.events("auth.rejected").count >= 1 })
        let rejected = try #require(relay.logs.events("auth.rejected").first)
        let until = try #require((rejected["until"] as? String).flatMap { try? Date($0, strategy: .iso8601) })
        #expect(until.timeIntervalSinceNow > 1.2, "\(rejected)")  // 2 s asked, not the 0.05 s back-off
        try await Task.sleep(for: .milliseconds(1000))
        #expect(await relay.simulator.snapshot().tokenRequests == 1)
        await relay.simulator.setFaults(SimulatorFaults())
        let record = try #require(try await relay.waitFor(id, states: ["delivered", "dead"]))
        #expect(record["state"] as? String == "delivered")
        #expect(record["attempts"] as? Int == 1)
        #expect(await relay.simulator.snapshot().tokenRequests == 2)
        await relay.stop()
    }

    @Test func rateLimitHoldsInEverySlidingWindow() async throws {
        let relay = try await RelayHarness { config in
            config.partner.rateLimit = RateLimitConfiguration(requests: 3, perSeconds: 1)
        }
        var ids: [String] = []
        for n in 0..<9 { ids.append(try #require(try await relay.post(Candidates.json(partnerID: "rl-\(n)")))) }
        for id in ids { _ = try await relay.waitFor(id, states: ["delivered"]) }
        // Exact at the partner: a request holds its place in the relay's window until its
        // answer, so no partner window of 1 s ever sees more than 3 arrivals, jitter or not.
        let arrivals = await relay.simulator.snapshot().requests.map(\.at).sorted()
        #expect(arrivals.count == 9)
        for (i, start) in arrivals.enumerated() {
            #expect(arrivals[i...].prefix { $0.timeIntervalSince(start) < 1 }.count <= 3)
        }
        #expect(relay.logs.events("partner.rate_limited").isEmpty)
        await relay.stop()
    }

    @Test func circuitOpensOnFailuresAndClosesAfterAProbe() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.errorRate = 1
        sim.faults.injectStatus = 502
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.circuitBreaker = CircuitBreakerConfiguration(failures: 2, cooldownSeconds: 0.3)
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "cb-1")))
        #expect(await eventually { !relay.logs.events("partner.circuit_opened").isEmpty })
        // Whose answers opened it, apart from `account`: every account waits (found from outside).
        let opened = relay.logs.events("partner.circuit_opened").first
        #expect(opened?["triggered_by"] as? String == "default" && opened?["account"] == nil, "\(String(describing: opened))")
        await relay.simulator.setFaults(SimulatorFaults())
        _ = try await relay.waitFor(id, states: ["delivered"])
        #expect(!relay.logs.events("partner.circuit_closed").isEmpty)
        await relay.stop()
    }

    @Test func shutdownHandsBackInFlightWithoutUsingAnAttempt() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.latencyMs = 3000
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.shutdownGraceSeconds = 0.2
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "s-1")))
        _ = try await eventually { try await relay.client.record(id)?["state"] as? String == "in_flight" }
        await relay.application.shutdown()
        try await relay.waitForExit()
        let handedBack = Date()
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        let record = try #require(try await outbox.record(id: id))
        #expect(record.state == .pending)
        #expect(record.attempts == 0)
        // Due twice the timeout after the hand-back, as a timed-out request is resent twice the
        // timeout after it left (found from outside: held one timeout, a partner slower than that
        // created the candidate twice at each restart).
        let timeout = relay.application.configuration.partner.timeoutSeconds
        let due = try #require(record.nextAttemptAt)
        #expect(due.timeIntervalSince(handedBack) > 1.5 * timeout, "due \(due.timeIntervalSince(handedBack)) s after the hand-back")
        #expect(due.timeIntervalSince(handedBack) <= 2 * timeout)
        #expect(!relay.logs.events("delivery.interrupted").isEmpty)
        #expect(!relay.logs.events("relay.started").isEmpty)
        #expect(!relay.logs.events("relay.stopping").isEmpty)
        #expect(!relay.logs.events("delivery.drained").isEmpty)
        #expect(!relay.logs.events("relay.stopped").isEmpty)
        let order = relay.logs.all.compactMap { line in
            ["relay.stopping", "delivery.drained", "relay.stopped"].first { line.contains("\"event\":\"\($0)\"") }
        }
        #expect(order == ["relay.stopping", "delivery.drained", "relay.stopped"], "\(order)")
        await relay.simulator.stop()
        relay.directory.cleanup()
    }

    @Test func inFlightDeliveryFinishesWithinTheGrace() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.latencyMs = 300
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.shutdownGraceSeconds = 5
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "s-2")))
        _ = try await eventually { try await relay.client.record(id)?["state"] as? String == "in_flight" }
        await relay.application.shutdown()
        try await relay.waitForExit()
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        #expect(try await outbox.record(id: id)?.state == .delivered)
        await relay.simulator.stop()
        relay.directory.cleanup()
    }
}
