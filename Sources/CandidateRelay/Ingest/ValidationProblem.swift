/// One reason an inbound candidate document was refused, as reported in a 422's `details`.
///
/// `field` is a path into the document (`address.country`, `links[0].url`, `$` for the document
/// itself); `problem` is a stable, machine-readable code such as `required` or `invalid_email`.
public struct ValidationProblem: Sendable, Equatable, Codable, Hashable {
    public let field: String
    public let problem: String

    public init(field: String, problem: String) {
        self.field = field
        self.problem = problem
    }

    /// One entry of an error answer's `details`.
    var detail: [String: String] { ["field": field, "problem": problem] }
}
