import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import PartnerSimulator

/// The simulator over real HTTP on port 0: what a relay talking to it would observe.
@Suite("PartnerSimulator")
struct PartnerSimulatorTests {
    // MARK: Fixture

    /// One answer, with its body parsed as a JSON object when it is one.
    struct Answer {
        var status: Int
        var headers: [String: String]
        var json: [String: Any]
    }

    static let apiKey = "test-api-key"
    static let secret = "test-secret"

    /// Runs `body` against a fresh simulator and always stops it.
    func withSimulator(
        _ configure: (inout PartnerSimulatorConfiguration) -> Void = { _ in },
        _ body: (PartnerSimulator) async throws -> Void
    ) async throws {
        var configuration = PartnerSimulatorConfiguration(apiKey: Self.apiKey, secret: Self.secret)
        configure(&configuration)
        let simulator = PartnerSimulator(configuration: configuration)
        let port = try await simulator.start()
        #expect(port > 0)
        do {
            try await body(simulator)
        } catch {
            await simulator.stop()
            throw error
        }
        await simulator.stop()
    }

    /// Mints a partner JWT by hand: base64url(header).base64url(claims).base64url(HMAC).
    static func mintJWT(
        iss: String = apiKey,
        secret: String = secret,
        exp: TimeInterval = Date().timeIntervalSince1970 + 300,
        alg: String = "HS256"
    ) -> String {
        let header = Base64URL.encode(Data(#"{"alg":"\#(alg)","typ":"JWT"}"#.utf8))
        let claims = Base64URL.encode(Data(#"{"iss":"\#(iss)","exp":\#(Int(exp))}"#.utf8))
        let key = SymmetricKey(data: Data(secret.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(header).\(claims)".utf8), using: key)
        return "\(header).\(claims).\(Base64URL.encode(Data(mac)))"
    }

    static func candidateBody(
        position: String = "11.11",
        partnerCandidateID: String? = "1111A",
        lastName: String? = "Chauck"
    ) -> [String: Any] {
        var body: [String: Any] = [
            "position_uid": position, "first_name": "Bobby", "email": "bobby@example.com",
            "source_contact": ["full_name": "Michael Rosen", "email": "michael@example.com"],
        ]
        if let partnerCandidateID { body["partner_candidate_id"] = partnerCandidateID }
        if let lastName { body["last_name"] = lastName }
        return body
    }

    func send(
        _ simulator: PartnerSimulator,
        _ method: HTTPMethod = .POST,
        _ path: String,
        headers: [(String, String)] = [],
        body: Data? = nil
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: simulator.baseURL + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        let json = (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any]
        var headerMap: [String: String] = [:]
        for header in response.headers { headerMap[header.name.lowercased()] = header.value }
        return Answer(status: Int(response.status.code), headers: headerMap, json: json ?? [:])
    }

    func create(
        _ simulator: PartnerSimulator,
        token: String = mintJWT(),
        body: [String: Any] = candidateBody()
    ) async throws -> Answer {
        let data = try JSONSerialization.data(withJSONObject: body)
        return try await send(
            simulator, .POST, "/candidates",
            headers: [("Authorization", "Bearer \(token)"), ("Content-Type", "application/json")], body: data)
    }

    // MARK: Create

    @Test func validJWTCreatesCandidate() async throws {
        try await withSimulator { simulator in
            let answer = try await create(simulator)
            #expect(answer.status == 201)
            #expect(answer.json["uid"] as? String == "00.AAA")
            #expect(answer.json["position_uid"] as? String == "11.11")
            #expect(answer.json["status"] as? String == "In progress")
            #expect((answer.json["current_steps"] as? [Any])?.count == 1)
            #expect((answer.json["completed_steps"] as? [Any])?.isEmpty == true)
            #expect((answer.json["source_contact"] as? [String: Any])?["full_name"] as? String == "Michael Rosen")
            let snapshot = await simulator.snapshot()
            #expect(snapshot.requests.map(\.status) == [201])
            #expect(snapshot.createdCount(positionUID: "11.11", partnerCandidateID: "1111A") == 1)
        }
    }

    static let refusedTokens: [(String, String)] = [
        ("wrong secret", mintJWT(secret: "not-the-secret")),
        ("expired", mintJWT(exp: Date().timeIntervalSince1970 - 5)),
        ("wrong iss", mintJWT(iss: "someone-else")),
        ("lifetime over 600 s", mintJWT(exp: Date().timeIntervalSince1970 + 3600)),
        ("alg not HS256", mintJWT(alg: "HS384")),
        ("garbage", "not-a-token"),
    ]

    @Test(arguments: refusedTokens)
    func refusedTokenIs401(reason: String, token: String) async throws {
        try await withSimulator { simulator in
            let answer = try await create(simulator, token: token)
            #expect(answer.status == 401, "\(reason)")
            #expect(answer.json["error"] as? String == "unauthorized")
            #expect(answer.json["status"] as? Int == 401)
            #expect(await simulator.snapshot().candidates.isEmpty)
        }
    }

    @Test func repeatAnswers409WithExistingUIDAsStringOrNumber() async throws {
        try await withSimulator { simulator in
            #expect(try await create(simulator, body: Self.candidateBody(partnerCandidateID: "A")).status == 201)
            let second = try await create(simulator, body: Self.candidateBody(partnerCandidateID: "B"))
            #expect(second.json["uid"] as? String == "5555")

            let repeatA = try await create(simulator, body: Self.candidateBody(partnerCandidateID: "A"))
            #expect(repeatA.status == 409)
            #expect(repeatA.json["error"] as? String == "candidate_post_conflict")
            #expect(repeatA.json["candidate_uid"] as? String == "00.AAA")
            let repeatB = try await create(simulator, body: Self.candidateBody(partnerCandidateID: "B"))
            #expect(repeatB.status == 409)
            #expect(repeatB.json["candidate_uid"] as? Int == 5555)
            #expect(await simulator.snapshot().candidates.count == 2)
        }
    }

    @Test func invalidBodiesAndPositions() async throws {
        try await withSimulator { simulator in
            let noLastName = try await create(simulator, body: Self.candidateBody(lastName: nil))
            #expect(noLastName.status == 400)
            #expect(noLastName.json["error"] as? String == "required_field")
            let notJSON = try await send(
                simulator, .POST, "/candidates", headers: [("Authorization", "Bearer \(Self.mintJWT())")],
                body: Data("{nope".utf8))
            #expect(notJSON.status == 400)
            #expect(notJSON.json["error"] as? String == "required_field")
            let missing = try await create(simulator, body: Self.candidateBody(position: "missing"))
            #expect(missing.status == 404)
            #expect(missing.json["error"] as? String == "position_not_found")
            let forbidden = try await create(simulator, body: Self.candidateBody(position: "forbidden"))
            #expect(forbidden.status == 403)
            #expect(forbidden.json["error"] as? String == "no_permission")
        }
    }

    // MARK: Rate limit and faults

    @Test func rateLimitRefusesTheFourthOfThree() async throws {
        try await withSimulator({ $0.rateLimitRequests = 3 }) { simulator in
            for index in 0..<3 {
                let body = Self.candidateBody(partnerCandidateID: "rl-\(index)")
                #expect(try await create(simulator, body: body).status == 201)
            }
            let fourth = try await create(simulator, body: Self.candidateBody(partnerCandidateID: "rl-3"))
            #expect(fourth.status == 429)
            #expect(fourth.json["error"] as? String == "too_many_requests")
            #expect(fourth.headers["retry-after"] == nil)
        }
    }

    /// Several customers (CONTRACT section 8): each api-key is accepted as `iss`, each has its
    /// own window by default, and `--rate-limit-scope partner` makes it one window for all.
    @Test(arguments: [PartnerSimulatorConfiguration.RateLimitScope.apiKey, .partner])
    func severalAPIKeysAndTheScopeOfTheLimit(scope: PartnerSimulatorConfiguration.RateLimitScope) async throws {
        try await withSimulator({
            $0.additionalAPIKeys = ["acme-key", "globex-key"]
            $0.rateLimitRequests = 2
            $0.rateLimitScope = scope
        }) { simulator in
            var statuses: [String: [Int]] = [:]
            for key in [Self.apiKey, "acme-key", "globex-key"] {
                for index in 0..<2 {
                    let body = Self.candidateBody(partnerCandidateID: "\(key)-\(index)")
                    statuses[key, default: []].append(try await create(simulator, token: Self.mintJWT(iss: key), body: body).status)
                }
            }
            switch scope {
            case .apiKey:
                #expect(statuses.values.allSatisfy { $0 == [201, 201] })
            case .partner:
                #expect(statuses[Self.apiKey] == [201, 201])
                #expect(statuses["acme-key"] == [429, 429])
                #expect(statuses["globex-key"] == [429, 429])
            }
            #expect(try await create(simulator, token: Self.mintJWT(iss: "initech-key")).status == 401)
            let keys = await simulator.snapshot().requests.map(\.apiKey)
            #expect(keys.filter { $0 == "acme-key" }.count == 2)
            #expect(keys.last == "initech-key")
        }
    }

    @Test func failNextAnswersInjectedStatusThenRecovers() async throws {
        try await withSimulator { simulator in
            await simulator.setFaults(SimulatorFaults(failNext: 2, retryAfter: "7"))
            let first = try await create(simulator)
            #expect(first.status == 503)
            #expect(first.json["error"] as? String == "injected_fault")
            #expect(first.headers["retry-after"] == "7")
            #expect(try await create(simulator).status == 503)
            #expect(try await create(simulator).status == 201)
            #expect(await simulator.snapshot().requests.map(\.status) == [503, 503, 201])
        }
    }

    @Test func tokenSeenTooLongAgoIsRefused() async throws {
        try await withSimulator { simulator in
            await simulator.setFaults(SimulatorFaults(tokenMaxAgeSeconds: 0))
            let token = Self.mintJWT()
            #expect(try await create(simulator, token: token).status == 201)
            let again = try await create(simulator, token: token, body: Self.candidateBody(partnerCandidateID: "x"))
            #expect(again.status == 401)
            #expect(again.json["error"] as? String == "unauthorized")
        }
    }

    @Test func closeRateDropsTheConnection() async throws {
        try await withSimulator({ $0.faults.closeRate = 1 }) { simulator in
            await #expect(throws: (any Error).self) { try await create(simulator) }
            #expect(await simulator.snapshot().candidates.isEmpty)
        }
    }

    @Test func faultsCanBeReplacedOverHTTP() async throws {
        try await withSimulator { simulator in
            let put = try await send(simulator, .PUT, "/_sim/faults", body: Data(#"{"failNext":1,"injectStatus":409}"#.utf8))
            #expect(put.status == 200)
            #expect(put.json["failNext"] as? Int == 1)
            let conflict = try await create(simulator)
            #expect(conflict.status == 409)
            #expect(conflict.json["candidate_uid"] == nil)
            let state = try await send(simulator, .GET, "/_sim/state")
            let requests = state.json["requests"] as? [[String: Any]]
            #expect(requests?.first?["status"] as? Int == 409)
            #expect(requests?.first?["positionUID"] as? String == "11.11")
        }
    }

    // MARK: OAuth

    func requestToken(_ simulator: PartnerSimulator, form: String, basic: String? = nil) async throws -> Answer {
        var headers = [("Content-Type", "application/x-www-form-urlencoded")]
        if let basic { headers.append(("Authorization", "Basic \(Data(basic.utf8).base64EncodedString())")) }
        return try await send(simulator, .POST, "/oauth/token", headers: headers, body: Data(form.utf8))
    }

    @Test func oauthTokenIsIssuedAndAccepted() async throws {
        try await withSimulator { simulator in
            let viaBasic = try await requestToken(
                simulator, form: "grant_type=client_credentials", basic: "demo-client:demo-client-secret")
            #expect(viaBasic.status == 200)
            #expect(viaBasic.json["token_type"] as? String == "Bearer")
            #expect(viaBasic.json["expires_in"] as? Int == 3600)
            let token = try #require(viaBasic.json["access_token"] as? String)
            #expect(try await create(simulator, token: token).status == 201)

            let viaBody = try await requestToken(
                simulator, form: "grant_type=client_credentials&client_id=demo-client&client_secret=demo-client-secret")
            #expect(viaBody.status == 200)
            let badClient = try await requestToken(
                simulator, form: "grant_type=client_credentials&client_id=demo-client&client_secret=wrong")
            #expect(badClient.status == 401)
            #expect(badClient.json["error"] as? String == "invalid_client")
            #expect(try await create(simulator, token: "made-up-token").status == 401)
            let snapshot = await simulator.snapshot()
            #expect(snapshot.tokensIssued == 2)
            #expect(snapshot.tokenRequests == 3)
        }
    }

    @Test func tokenEndpointDownAnswers503() async throws {
        try await withSimulator({ $0.faults.tokenEndpointDown = true }) { simulator in
            let answer = try await requestToken(
                simulator, form: "grant_type=client_credentials", basic: "demo-client:demo-client-secret")
            #expect(answer.status == 503)
            let snapshot = await simulator.snapshot()
            #expect(snapshot.tokenRequests == 1)
            #expect(snapshot.tokensIssued == 0)
        }
    }

    // MARK: Pure parts

    @Test func uidsAlternateBetweenStringAndNumericShapes() {
        #expect((0..<4).map(SimulatorStore.makeUID(sequence:)) == ["00.AAA", "5555", "00.AAB", "5556"])
    }
}
