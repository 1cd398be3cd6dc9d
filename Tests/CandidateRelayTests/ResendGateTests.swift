import CandidateRelayTesting
import Foundation
import Synchronization
import Testing
@testable import CandidateRelay

/// The resend after a 401, when a pause began meanwhile: not sent, and not given a fresh token
/// first (found from outside: the token was fetched, with oauth2 a request to the token
/// endpoint, and then the gate refused the resend).
@Suite struct ResendGateTests {
    /// A partner whose first answer is a 401, given while another request's 429 pauses the
    /// account for a minute (as a second worker's would); 201 after that.
    final class PausingPartner: PartnerClient, Sendable {
        let application = Mutex<RelayApplication?>(nil)
        let calls = Mutex(0)

        func createCandidate(payload: Data, idempotencyKey: String, bearerToken: String) async -> PartnerAnswer {
            let call = calls.withLock { $0 += 1; return $0 }
            guard call == 1, let gate = application.withLock({ $0 })?.gate else {
                return .response(status: 201, retryAfter: nil, body: Data(#"{"uid":"c-1"}"#.utf8))
            }
            if let admission = try? await gate.admit() {
                let other = await gate.bind(admission, to: AccountConfiguration.defaultID)
                _ = try? await gate.withSlot(other, account: AccountConfiguration.defaultID) {}
                await gate.settle(other, AttemptReport(health: .untested, status: 429, accountPauseUntil: Date().addingTimeInterval(60)))
            }
            return .response(status: 401, retryAfter: nil, body: Data())
        }
    }

    @Test func aResendThatMayNotGoFetchesNoToken() async throws {
        let partner = PausingPartner()
        let relay = try await RelayHarness(partnerClient: partner) { $0.delivery.workers = 2 }
        partner.application.withLock { $0 = relay.application }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "resend-1")))
        // Handed back unsent: pending, no attempt used.
        #expect(await eventually(timeout: 10) { !relay.logs.events("auth.token_rejected").isEmpty })
        #expect(try await eventually(timeout: 10) {
            let record = try await relay.client.record(id)
            return record?["state"] as? String == "pending" && record?["attempts"] as? Int == 0
        })
        try await Task.sleep(for: .milliseconds(300))
        #expect(partner.calls.withLock { $0 } == 1)
        // The first request's token only: none minted for the resend that did not go.
        #expect(relay.logs.events("auth.token_minted").count == 1)
        await relay.stop()
    }
}
