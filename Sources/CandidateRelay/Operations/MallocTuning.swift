#if canImport(Glibc)
import Glibc
#endif

/// Keeps glibc's malloc from handing the writer's scratch memory back to the kernel after every
/// statement.
///
/// By default glibc returns the free top of a thread's heap to the kernel (`madvise`) as soon as
/// 128 KiB of it lie unused. SQLite allocates and frees two such blocks per write statement on
/// the outbox's paths: the statement journal's first 64 KiB chunk (any statement that may abort
/// halfway: a trigger, a foreign key) and an 85 KiB page-cache bulk for each ephemeral table
/// (`RETURNING`, `IN (...)`). Each came back from the kernel as fresh pages that had to be
/// faulted in and zeroed, and each return flushed the TLB of the other cores the process ran
/// on (an IPI): measured
/// during a 20,000-event drain, ~14 page faults per delivery and about a quarter of the writer
/// thread's CPU. Up to 1 MiB left free at the top of a heap is kept for reuse; more than that is
/// still returned, so memory after a burst (a 20 MB candidate) still goes back.
///
/// Setting the threshold also fixes glibc's mmap threshold at its 128 KiB default. By default
/// glibc raises both after each large block it frees, so once one 20 MB candidate had come and
/// gone, the next ones were put in a heap and up to twice their size stayed there: after three
/// bursts of 20 MB candidates the daemon kept 228 MiB for good, where it now goes back to 51 MiB.
public enum MallocTuning {
    /// Free memory at the top of a heap that stays with the process (bytes).
    public static let trimThreshold: Int32 = 1 << 20

    /// Applies the tuning once per process; false where there is no glibc `mallopt` (musl's
    /// does nothing, and the call is then harmless), or where the operator set the threshold
    /// (`MALLOC_TRIM_THRESHOLD_`, or `malloc.trim_threshold` in `GLIBC_TUNABLES`): theirs stands.
    @discardableResult
    public static func apply() -> Bool { applied }

    /// Hands free memory back to the kernel wherever it lies in the heaps, not only at their
    /// top (glibc's `malloc_trim`): what many connections held (a partial request each) stays
    /// free in the middle of the heaps once they close, and the threshold above never returns
    /// it. Found from outside: 1,000 connections each holding 60 KiB of an unfinished request
    /// left the daemon at 152 MiB after they had all closed, for good; a trim brought it to 48.
    /// The top `trimThreshold` bytes of the main heap stay. False where there is no glibc.
    @discardableResult
    public static func trim() -> Bool {
        #if canImport(Glibc)
        typealias MallocTrim = @convention(c) (Int) -> Int32
        guard let symbol = mallocTrimSymbol else { return false }
        _ = unsafeBitCast(symbol, to: MallocTrim.self)(Int(trimThreshold))
        return true
        #else
        return false
        #endif
    }

    #if canImport(Glibc)
    nonisolated(unsafe) private static let mallocTrimSymbol: UnsafeMutableRawPointer? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim")
    #endif

    private static let applied: Bool = {
        #if canImport(Glibc)
        if getenv("MALLOC_TRIM_THRESHOLD_") != nil { return false }
        if let tunables = getenv("GLIBC_TUNABLES"), String(cString: tunables).contains("malloc.trim_threshold") { return false }
        // `mallopt` is not in Swift's Glibc module; malloc.h's M_TRIM_THRESHOLD is -1.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return false }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        return mallopt(-1, trimThreshold) == 1
        #else
        return false
        #endif
    }()
}
