import Testing
@testable import CandidateRelay

/// The inbound connection cap taken from the open-files limit.
@Suite struct ConnectionCapTests {
    /// A quarter of the limit, at least 512, is kept for everything else; the cap is never under
    /// 32, unless the limit is so low that 32 would be a quarter of it or more (under `ulimit -n
    /// 32` the cap was the whole limit, and nothing was left for the outbox or the partner).
    @Test(arguments: [(16, 4), (32, 8), (64, 16), (128, 32), (256, 32), (544, 32), (1024, 512), (2048, 1536),
                      (16384, 12288), (65536, 49152)])
    func theCapLeavesRoomForTheRest(limit: Int, cap: Int) {
        #expect(ConnectionCap.cap(fileLimit: limit) == cap)
    }
}
