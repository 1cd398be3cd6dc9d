#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import CandidateRelay

@Suite(.serialized) struct MallocTuningTests {
    /// The two blocks SQLite takes and gives back around each write statement of a delivery (a
    /// statement journal's first chunk and an ephemeral table's page-cache bulk, sizes seen with
    /// a `perf probe` on malloc): once the tuning is applied, taking them again finds the same
    /// pages instead of fresh ones from the kernel. Before it, each round trip faulted in ~37.
    @Test func sqlitesScratchBlocksAreReusedWithoutPageFaults() throws {
        #if canImport(Glibc)
        #expect(MallocTuning.apply())
        func minorFaults() -> Int {
            var usage = rusage()
            getrusage(__rusage_who_t(1), &usage)  // RUSAGE_THREAD (a GNU extension, not imported)
            return usage.ru_minflt
        }
        func cycle() {
            guard let journal = malloc(65_552), let bulk = malloc(87_208) else { return }
            memset(journal, 1, 65_552)
            memset(bulk, 1, 87_208)
            free(bulk)
            free(journal)
        }
        cycle()
        let before = minorFaults()
        for _ in 0..<200 { cycle() }
        let faults = minorFaults() - before
        #expect(faults < 20, "\(faults) minor page faults for 200 round trips")
        #endif
    }

    /// A large candidate's buffers go back to the kernel when freed, the second time as the
    /// first. glibc's default raises its mmap threshold to the size of each large block freed,
    /// so from the second 20 MB body on they came from a heap and stayed there (a burst of
    /// 20 MB candidates left the daemon at 228 MiB for good, 51 MiB with the tuning).
    @Test func aLargeBlockIsMappedEvenAfterOneWasFreed() throws {
        #if canImport(Glibc)
        #expect(MallocTuning.apply())
        func isMapped(_ block: UnsafeMutableRawPointer) -> Bool {
            // glibc's chunk header: the size word just before the block, IS_MMAPPED = 0x2.
            block.load(fromByteOffset: -MemoryLayout<Int>.size, as: Int.self) & 0x2 != 0
        }
        for round in 0..<3 {
            let block = try #require(malloc(20_000_000))
            memset(block, 1, 4096)
            #expect(isMapped(block), "round \(round)")
            free(block)
        }
        #endif
    }

    /// Memory freed in the middle of a heap (what many connections each held, once they close)
    /// goes back to the kernel at a trim, not only what lies at the heap's top.
    @Test func aTrimReturnsFreeMemoryFromTheMiddleOfTheHeap() throws {
        #if canImport(Glibc)
        func residentMiB() -> Int {
            guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
                  let pages = Int(statm.split(separator: " ")[1]) else { return -1 }
            return (pages * Int(sysconf(Int32(_SC_PAGESIZE)))) >> 20
        }
        // 64 MiB of 4 KiB blocks, each touched; every 50th kept, so the free space lies between
        // blocks still in use, never at the top alone.
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<16_384 {
            let block = try #require(malloc(4096))
            memset(block, 1, 4096)
            blocks.append(block)
        }
        var kept: [UnsafeMutableRawPointer] = []
        for (n, block) in blocks.enumerated() {
            if n % 50 == 0 { kept.append(block) } else { free(block) }
        }
        // `kept` (1.3 MiB) is never freed, on purpose: freed, it would join the free space into
        // one 64 MiB chunk, from which `aLargeBlockIsMappedEvenAfterOneWasFreed`'s 20 MB could be
        // served instead of mapped (seen in a parallel run).
        withExtendedLifetime(kept) {}
        let before = residentMiB()
        #expect(MallocTuning.trim())
        let after = residentMiB()
        #expect(before - after >= 32, "resident \(before) MiB before the trim, \(after) MiB after")
        #endif
    }
}
