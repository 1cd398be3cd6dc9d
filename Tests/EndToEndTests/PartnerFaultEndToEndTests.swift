import CandidateRelay
import CandidateRelayTesting
import Foundation
import PartnerSimulator
import Testing

/// A partner that stalls or lies: each test is a fault that once held a worker (or the whole
/// daemon) for ever.
@Suite struct PartnerFaultEndToEndTests {
    /// Headers, then a body that never comes: the attempt times out on the whole answer, the
    /// circuit's probe stalls the same way and is released the same way, and once the partner
    /// recovers the event is linked to the candidate the stalled request created — one
    /// candidate, never two.
    @Test func stalledBodyTimesOutAndNeverDuplicates() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.stallBodyMs = 600_000
        let relay = try await RelayHarness(simulator: sim) { config in
            config.partner.timeoutSeconds = 0.5
            config.delivery.circuitBreaker = CircuitBreakerConfiguration(failures: 1, cooldownSeconds: 0.2)
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "stall-1")))
        // Two stalled requests: the first attempt, then the probe after the circuit opened.
        #expect(await eventually(timeout: 20) { relay.logs.events("delivery.retry_scheduled").filter { $0["error"] as? String == "timeout" }.count >= 2 })
        #expect(!relay.logs.events("partner.circuit_opened").isEmpty)
        await relay.simulator.setFaults(SimulatorFaults())
        let record = try #require(try await relay.waitFor(id, states: ["delivered", "linked", "dead"]))
        #expect(record["state"] as? String == "linked")
        let snapshot = await relay.simulator.snapshot()
        #expect(snapshot.createdCount(positionUID: "11.11", partnerCandidateID: "stall-1") == 1)
        #expect(record["candidate_uid"] as? String == snapshot.candidates.first?.uid)
        // And the circuit closed again: a second event goes straight through.
        let next = try #require(try await relay.post(Candidates.json(partnerID: "stall-2")))
        #expect(try await relay.waitFor(next, states: ["delivered"])?["state"] as? String == "delivered")
        await relay.stop()
    }

    /// A relay whose partner answers after `latencyMs`, past its `timeoutSeconds`; a backoff of
    /// 0.05 s and a circuit that stays closed, so that only the hold spaces the requests.
    static func slowPartner(latencyMs: Int, timeoutSeconds: Double) async throws -> RelayHarness {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.latencyMs = latencyMs
        return try await RelayHarness(simulator: sim) { config in
            config.partner.timeoutSeconds = timeoutSeconds
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 0.05, multiplier: 1, maxSeconds: 0.05)
            config.delivery.circuitBreaker = CircuitBreakerConfiguration(failures: 100, cooldownSeconds: 0.2)
        }
    }

    /// A request that timed out may still be at work at the partner: the resend waits as long
    /// again as the timeout, not just the backoff (0.05 s here), so that the partner had the
    /// time we gave the first request to finish it before a second one for the same candidate.
    @Test func aTimedOutRequestIsResentOnlyAfterATimeoutMore() async throws {
        let relay = try await Self.slowPartner(latencyMs: 1_200, timeoutSeconds: 0.5)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "slow-1")))
        #expect(await eventually(timeout: 20) { await relay.simulator.snapshot().requests.count >= 2 })
        let arrivals = await relay.simulator.snapshot().requests.map(\.at).sorted()
        // The first timed out 0.5 s after it was sent; its resend was sent no sooner than 0.5 s
        // later: ~1 s apart at the partner. Less by however much later the first one arrived
        // after its send (a new connection; 0.14 s once on a loaded machine); a resend after the
        // backoff alone would come ~0.55 s after the first.
        let gap = arrivals[1].timeIntervalSince(arrivals[0])
        #expect(gap >= 0.75, "resent \(gap) s after the first request")
        let retry = try #require(relay.logs.events("delivery.retry_scheduled").first)
        #expect(retry["error"] as? String == "timeout")
        await relay.simulator.setFaults(SimulatorFaults())
        let record = try #require(try await relay.waitFor(id, states: ["delivered", "linked", "dead"]))
        #expect(["delivered", "linked"].contains(record["state"] as? String))
        #expect(await relay.simulator.snapshot().createdCount(positionUID: "11.11", partnerCandidateID: "slow-1") == 1)
        await relay.stop()
    }

    /// A gateway's 502 or 504 (it gave up on the partner, which may still be creating the
    /// candidate): the resend waits a timeout more too, not the backoff alone (found from
    /// outside: the resend met the first request still at work, and both created it).
    @Test(arguments: [502, 504, 524, 503]) func aGatewaysGiveUpIsResentOnlyAfterATimeoutMore(status: Int) async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.failNext = 1
        sim.faults.injectStatus = status
        let relay = try await RelayHarness(simulator: sim) { config in
            config.partner.timeoutSeconds = 1
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 0.05, multiplier: 1, maxSeconds: 0.05)
            config.delivery.circuitBreaker = CircuitBreakerConfiguration(failures: 100, cooldownSeconds: 0.2)
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "gateway-\(status)")))
        let record = try #require(try await relay.waitFor(id, states: ["delivered", "linked", "dead"]))
        #expect(record["state"] as? String == "delivered")
        let arrivals = await relay.simulator.snapshot().requests.map(\.at).sorted()
        try #require(arrivals.count == 2)
        let gap = arrivals[1].timeIntervalSince(arrivals[0])
        #expect(gap >= 0.95, "resent \(gap) s after the gateway's \(status)")
        await relay.stop()
    }

    /// The same for another event of the same candidate (found from outside: it was sent as
    /// soon as the first timed out, while the partner might still be creating the candidate).
    @Test func anotherEventOfATimedOutCandidateWaitsATimeoutMoreToo() async throws {
        let relay = try await Self.slowPartner(latencyMs: 3_500, timeoutSeconds: 1.5)
        let first = try #require(try await relay.post(Candidates.json(partnerID: "slow-twice"), key: "slow-twice-1"))
        // (The simulator lists a request once answered: 3.5 s later.)
        #expect(await eventually(timeout: 20) { (try? await relay.application.outbox.record(id: first))?.state == .inFlight })
        // The second event of the candidate (an update from the HR system) while the first is out.
        let second = try #require(try await relay.post(Candidates.json(partnerID: "slow-twice").replacingOccurrences(of: "}", with: #","note":"update"}"#),
                                                       key: "slow-twice-2"))
        #expect(first != second)
        #expect(await eventually(timeout: 20) { await relay.simulator.snapshot().requests.count >= 2 })
        let arrivals = await relay.simulator.snapshot().requests.map(\.at).sorted()
        // The first timed out 1.5 s after it was sent; the candidate's next request (the second
        // event, older than the first's resend) no sooner than 1.5 s later: ~3 s apart. Sent
        // when the first timed out, it came 1.5-2.5 s after it (the idle workers look again
        // at least once a second).
        let gap = arrivals[1].timeIntervalSince(arrivals[0])
        #expect(gap >= 2.7, "the candidate's next request came \(gap) s after the first")
        await relay.simulator.setFaults(SimulatorFaults())
        for id in [first, second] {
            let record = try #require(try await relay.waitFor(id, states: ["delivered", "linked", "dead"]))
            #expect(["delivered", "linked"].contains(record["state"] as? String))
        }
        #expect(await relay.simulator.snapshot().createdCount(positionUID: "11.11", partnerCandidateID: "slow-twice") == 1)
        await relay.stop()
    }

    /// A partner that refuses connections (down, or its port closed): an attempt takes the
    /// client's connect timeout (3 s, its retries included), not 10 s, and is recorded as
    /// `connection_refused` (nothing sent: the plain backoff), not as a `timeout`.
    @Test func aRefusedConnectionFailsTheAttemptWithinTheConnectTimeout() async throws {
        let relay = try await RelayHarness { config in
            config.partner.baseURL = "http://127.0.0.1:1"
            config.partner.timeoutSeconds = 30
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "refused-1")))
        #expect(await eventually(timeout: 30) { relay.logs.events("delivery.retry_scheduled").count >= 2 })
        let retries = relay.logs.events("delivery.retry_scheduled")
        #expect(retries.count >= 2)
        for retry in retries {
            #expect(retry["error"] as? String == "connection_refused")
            #expect(retry["event_id"] as? String == id)
            let latency = try #require(retry["latency_ms"] as? Int, "\(retry)")
            // 3 s and a loaded machine's lateness, where it was 10 s: a bound, not a speed.
            #expect(latency < 8_000, "\(retry)")
        }
        await relay.stop()
    }

    static func oauthRelay(tokenLatencyMs: Int, timeoutSeconds: Double) async throws -> RelayHarness {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.tokenLatencyMs = tokenLatencyMs
        return try await RelayHarness(simulator: sim) { config in
            let url = config.partner.baseURL
            config.partner.auth = .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: url + "/oauth/token", clientID: sim.oauthClientID,
                clientSecret: Secret(sim.oauthClientSecret, source: "test"), scope: "candidates", clientAuth: .basic))
            config.partner.timeoutSeconds = timeoutSeconds
            config.delivery.shutdownGraceSeconds = 0.3
        }
    }

    /// An OAuth2 token endpoint that answers its head and stalls, or never answers: the fetch
    /// is bounded by the timeout, the account waits (no attempt used), never dead, and the
    /// event is delivered once it recovers.
    @Test func stallingTokenEndpointIsBounded() async throws {
        let relay = try await Self.oauthRelay(tokenLatencyMs: 600_000, timeoutSeconds: 0.5)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "tok-1")))
        #expect(await eventually(timeout: 20) { relay.logs.events("auth.rejected").contains { $0["error"] as? String == "token_unavailable" } })
        #expect(relay.logs.events("auth.token_failed").contains { $0["error"] as? String == "timeout" })
        let waiting = try await relay.client.record(id)
        #expect(waiting?["state"] as? String != "dead")
        #expect(waiting?["attempts"] as? Int ?? 0 <= 1)
        await relay.simulator.setFaults(SimulatorFaults())
        #expect(try await relay.waitFor(id, states: ["delivered"])?["state"] as? String == "delivered")
        await relay.stop()
    }

    /// SIGTERM while a token fetch stalls (and its timeout is far away): the drain does not
    /// wait for the fetch; the event is handed back without using an attempt.
    @Test func stallingTokenFetchDoesNotHoldShutdown() async throws {
        let relay = try await Self.oauthRelay(tokenLatencyMs: 600_000, timeoutSeconds: 60)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "tok-2")))
        #expect(await eventually(timeout: 20) { await relay.simulator.snapshot().tokenRequests > 0 })
        let started = ContinuousClock.now
        await relay.application.shutdown()
        let exited = await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await relay.waitForExit()) != nil }
            group.addTask { try? await Task.sleep(for: .seconds(15)); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        #expect(exited)
        #expect(ContinuousClock.now - started < .seconds(5))
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        let record = try await outbox.record(id: id)
        #expect(record?.state == .pending)
        #expect(record?.attempts == 0)
        await relay.simulator.stop()
        relay.directory.cleanup()
    }

    /// `Retry-After: 0` on every answer: the backoff still spaces the attempts, so the event is
    /// neither dead nor hammering the partner.
    @Test func retryAfterZeroKeepsTheBackoff() async throws {
        var sim = PartnerSimulatorConfiguration()
        sim.faults.errorRate = 1
        sim.faults.injectStatus = 429
        sim.faults.retryAfter = "0"
        let relay = try await RelayHarness(simulator: sim) { config in
            config.delivery.backoff = BackoffConfiguration(initialSeconds: 0.2, multiplier: 2, maxSeconds: 0.4)
            config.delivery.maxAttempts = 20
        }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "ra-0")))
        #expect(await eventually(timeout: 20) { relay.logs.events("delivery.retry_scheduled").count >= 3 })
        let requests = await relay.simulator.snapshot().requests.map(\.at).sorted()
        for (earlier, later) in zip(requests, requests.dropFirst()) {
            #expect(later.timeIntervalSince(earlier) >= 0.09)  // at least half the 0.2 s backoff
        }
        #expect(try await relay.client.record(id)?["state"] as? String != "dead")
        await relay.simulator.setFaults(SimulatorFaults())
        #expect(try await relay.waitFor(id, states: ["delivered"])?["state"] as? String == "delivered")
        await relay.stop()
    }

    /// Workers that claimed an event and wait for a place in a full rate window hand it back at
    /// once on SIGTERM: nothing was sent, so there is nothing to wait the grace period for.
    @Test func shutdownDoesNotWaitForRateLimitedWorkers() async throws {
        let relay = try await RelayHarness { config in
            config.partner.rateLimit = RateLimitConfiguration(requests: 1, perSeconds: 3600)
            config.delivery.workers = 4
            config.delivery.shutdownGraceSeconds = 30
        }
        var ids: [String] = []
        for n in 0..<4 { ids.append(try #require(try await relay.post(Candidates.json(partnerID: "rl-wait-\(n)")))) }
        #expect(await eventually { relay.logs.events("delivery.succeeded").count == 1 })
        let started = ContinuousClock.now
        await relay.application.shutdown()
        try await relay.waitForExit()
        #expect(ContinuousClock.now - started < .seconds(5))
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        var pending = 0
        for id in ids {
            let record = try #require(try await outbox.record(id: id))
            #expect(record.state == .delivered || (record.state == .pending && record.attempts == 0))
            if record.state == .pending { pending += 1 }
        }
        #expect(pending == 3)
        #expect(await relay.simulator.snapshot().requests.count == 1)
        await relay.simulator.stop()
        relay.directory.cleanup()
    }
}
