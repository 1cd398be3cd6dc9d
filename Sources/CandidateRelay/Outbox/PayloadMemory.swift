import Synchronization

/// The memory the workers hold in large payloads, between the claim that reads one and the end
/// of its delivery; a claim takes a large payload only if it fits.
///
/// A claim reads the whole body into memory, and each delivery holds it (and the client's
/// buffers) until the partner answers. With sixteen workers and a backlog of 20 MB candidates,
/// sixteen were held at once: the daemon went from 50 to 373 MiB delivering them to a partner
/// taking 2 s an answer. Ingest has had a budget of its own for bodies being received; this is
/// the one for bodies being sent. Bodies up to `PayloadStore.directLimit` are not counted (a
/// usual candidate is a few kB), but the events behind a large one in its account wait with it,
/// as a claim walks each account in order. A body larger than the whole budget is still taken
/// when nothing else is held, so every event can go out; a steady flow of other large ones
/// can keep it waiting (it has no turn of its own).
public final class PayloadMemory: Sendable {
    /// 64 MiB, as ingest's: three 20 MB candidates in flight at once. The daemon uses two of
    /// the largest bodies `ingest.max_body_bytes` allows at start if that is more (ingest's
    /// rule). A body larger than the budget (a limit raised by a reload) waits until nothing
    /// else is held, then goes alone.
    public static let defaultBudget = 64 << 20

    /// The rule both budgets follow (this one, and ingest's for bodies being received): 64 MiB,
    /// or two of the largest bodies allowed if that is more.
    public static func budget(maxBodyBytes: Int) -> Int {
        max(defaultBudget, 2 * maxBodyBytes)
    }

    public let budget: Int
    private let held = Atomic<Int>(0)

    public init(budget: Int = PayloadMemory.defaultBudget) {
        self.budget = budget
    }

    /// Bytes held now.
    public var heldBytes: Int { held.load(ordering: .relaxed) }

    /// Takes `bytes` if they fit in the budget, or if nothing is held.
    func reserve(_ bytes: Int) -> Bool {
        var current = held.load(ordering: .relaxed)
        while true {
            guard current == 0 || current + bytes <= budget else { return false }
            let (exchanged, original) = held.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        held.subtract(bytes, ordering: .relaxed)
    }
}
