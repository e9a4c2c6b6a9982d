//! A small seeded PRNG (SplitMix64): every random choice of a run follows
//! from its seed, so a run that finds a violation can be replayed.

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, good enough for
/// picking faults and shaping DAGs.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator for one thing named by `parts` (a job, a task, an
    /// attempt), independent of the order in which things are asked for.
    pub(crate) fn for_parts(seed: u64, parts: &[&str]) -> Rng {
        let mut rng = Rng::new(seed);
        for part in parts {
            for byte in part.bytes() {
                rng.state ^= u64::from(byte);
                rng.next_u64();
            }
            rng.state ^= 0xff;
            rng.next_u64();
        }
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `items`, which must not be empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// An index drawn with the given weights.
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut draw = self.next_u64() % total;
        for (i, weight) in weights.iter().enumerate() {
            if draw < *weight {
                return i;
            }
            draw -= weight;
        }
        weights.len() - 1
    }
}
