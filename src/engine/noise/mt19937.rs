//! The 32-bit Mersenne Twister (MT19937) exactly as torch's CPU generator runs it.

/// Number of 32-bit words in the MT19937 state.
const N: usize = 624;
/// Middle word offset of the MT19937 recurrence.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// MT19937 with torch's seeding.
///
/// torch (`at::mt19937`, used by `CPUGeneratorImpl`) seeds with the classic `init_genrand`
/// recurrence on the **low 32 bits** of the 64-bit seed: `state[0] = seed as u32`,
/// `state[i] = 1812433253 * (state[i-1] ^ (state[i-1] >> 30)) + i` (mod 2^32). The first output
/// regenerates the whole state block, then outputs are tempered state words in order. This is the
/// same stream as `std::mt19937(seed as u32)` and numpy's `RandomState(seed as u32)` raw outputs.
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; N],
    /// Index of the next state word to temper; `N` means the block must be regenerated first.
    next: usize,
}

impl Mt19937 {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        // Truncation to 32 bits is torch's behaviour (`seed & 0xffffffff`).
        state[0] = seed as u32;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, next: N }
    }

    fn regenerate(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// Next 32-bit output.
    #[inline]
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_stream() {
        // The C++ standard requires the 10000th output of a default-constructed
        // std::mt19937 (seed 5489) to be 4123659995.
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
        // First outputs for seed 5489 (mt19937ar.c's init_genrand(5489)).
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        assert_eq!(mt.next_u32(), 581_869_302);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_matter() {
        let mut a = Mt19937::new(42);
        let mut b = Mt19937::new((7u64 << 32) | 42);
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }
}
