import AsyncHTTPClient
import CandidateRelay
import CandidateRelayTesting
import Foundation
import Testing

/// What the partner receives on the wire.
@Suite struct PartnerWireEndToEndTests {
    /// A request leaves in one write, head and body together, so the partner reads it whole at
    /// once. AsyncHTTPClient flushed the head alone and then the body: two writes, two TCP
    /// segments, two reads at the partner for every candidate (Vendor/README.md).
    @Test func aCandidateReachesThePartnerInOneRead() async throws {
        let body = #"{"uid":"C-1"}"#
        let partner = try RawPartner(answer: "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        defer { partner.stop() }
        let client = HTTPPartnerClient(httpClient: HTTPClient.shared, baseURL: "http://127.0.0.1:\(partner.port)", timeoutSeconds: 5)
        for index in 0..<5 {
            let payload = Data(Candidates.json(partnerID: "wire-\(index)").utf8)
            let answer = await client.createCandidate(payload: payload, idempotencyKey: "evt_wire_\(index)", bearerToken: "token")
            guard case .response(let status, _, _) = answer else {
                Issue.record("no answer: \(answer)")
                return
            }
            #expect(status == 201)
        }
        #expect(partner.readsPerRequest == [1, 1, 1, 1, 1])
    }
}
