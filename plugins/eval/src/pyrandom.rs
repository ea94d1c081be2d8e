//! Python's `random` module, as far as LongRoPE's passkey prompts use it: `random.seed(int)` and
//! `random.randint(a, b)` on CPython's Mersenne Twister (`Modules/_randommodule.c`, `Lib/random.py`).
//!
//! `evaluation/passkey.py` (microsoft/LongRoPE@c9e56aa) calls `set_seed()` (seed 42) once per length and then,
//! per sample, `randint(0, n_garbage)` for the key's position and `randint(1, 50000)` for the key. With this
//! generator the `reference` passkey mode builds exactly the reference's prompts (checked against
//! `tests/fixtures/reference_golden.json`, made by running the reference's `generate_prompt`).
//!
//! - seeding: the absolute value of the integer split into 32-bit words, least significant first, fed to
//!   MT19937's `init_by_array`;
//! - `getrandbits(k)` for `k <= 32`: one 32-bit output shifted right by `32 - k`;
//! - `randint(a, b) = a + randbelow(b - a + 1)`, `randbelow(n)`: draw `getrandbits(n.bit_length())` until it is
//!   below `n`.

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random` restricted to integer seeds and small `randint` ranges.
#[derive(Debug, Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut key: Vec<u32> = Vec::new();
        let mut n = seed;
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    /// One 32-bit output of MT19937 (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.getrandbits(k)` for `1 <= k <= 32`.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        assert!((1..=32).contains(&k), "getrandbits({k}) is implemented for 1..=32 bits");
        self.next_u32() >> (32 - k)
    }

    /// `random._randbelow(n)` for `1 <= n < 2^32`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n >= 1 && n < (1 << 32), "randbelow({n}) is implemented for 1 <= n < 2^32");
        let k = 64 - n.leading_zeros();
        loop {
            let r = u64::from(self.getrandbits(k));
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)`, both ends included.
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        a + self.randbelow(b - a + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cpython() {
        // python3 -c "import random; random.seed(42); print([random.getrandbits(32) for _ in range(3)])"
        let mut r = PyRandom::new(42);
        assert_eq!([r.next_u32(), r.next_u32(), r.next_u32()], [2_746_317_213, 478_163_327, 107_420_369]);
        // python3 -c "import random; random.seed(42); print([random.randint(1, 50000) for _ in range(3)])"
        let mut r = PyRandom::new(42);
        assert_eq!([r.randint(1, 50_000), r.randint(1, 50_000), r.randint(1, 50_000)], [41_906, 7_297, 1_640]);
        // A seed above 2^32 is two key words.
        let mut r = PyRandom::new(1 << 40);
        assert_eq!(r.randint(0, 9), 1);
    }
}
