import Foundation
import Hummingbird

/// Builds the simulator's HTTP answers. The partner's error shape
/// (`{"status", "error", "message"}`) is produced in this one place so every endpoint agrees.
enum SimulatorResponse {
    /// An arbitrary JSON object answer; keys are sorted so answers are stable in tests and logs.
    static func json(status: Int, object: [String: Any], headers: HTTPFields = [:]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return raw(status: status, data: data, headers: headers)
    }

    /// A partner error answer; `extra` adds fields such as `candidate_uid`.
    static func partnerError(
        status: Int,
        code: String,
        message: String,
        extra: [String: Any] = [:],
        headers: HTTPFields = [:]
    ) -> Response {
        var object: [String: Any] = ["status": status, "error": code, "message": message]
        object.merge(extra) { _, new in new }
        return json(status: status, object: object, headers: headers)
    }

    /// An `Encodable` value as JSON, with ISO 8601 dates to the millisecond (inspection
    /// endpoints: a rate-limit check needs arrival times finer than a second).
    static func encoded<T: Encodable>(_ value: T, status: Int = 200) -> Response {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)))
        }
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return raw(status: status, data: data, headers: [:])
    }

    /// `Retry-After` for a 429/503 answer, only when the faults ask for one: the real partner
    /// may or may not send it, and clients must cope with both.
    static func retryAfterHeaders(status: Int, faults: SimulatorFaults) -> HTTPFields {
        guard status == 429 || status == 503, let value = faults.retryAfter else { return [:] }
        return [.retryAfter: value]
    }

    private static func raw(status: Int, data: Data, headers: HTTPFields) -> Response {
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(
            status: HTTPResponse.Status(code: status),
            headers: fields,
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}
