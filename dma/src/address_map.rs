//! Hash maps keyed by page-aligned addresses, for the per-request tables (live
//! requests, live allocations, a container's mappings) that are updated on every map
//! and unmap.
//!
//! std's default SipHash costs more than the rest of a lookup and defends against
//! collision attacks these keys cannot mount (the keys are addresses this process
//! chose). Page-aligned keys have all-zero low bits, so the hash must spread every
//! input bit into the low bits the table indexes by.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by an address, with [`AddressHasher`].
pub type AddressMap<V> = HashMap<u64, V, BuildHasherDefault<AddressHasher>>;

/// Hashes a `u64` address: a folded 128-bit multiply, which carries every input bit
/// into the low output bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(value ^ self.0) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn page_aligned_keys_spread_over_the_low_bits() {
        // 4096 consecutive pages into 4096 buckets by the low 12 bits of the hash: a
        // hash that kept the keys' zero low bits would put them all in one bucket.
        let build = BuildHasherDefault::<AddressHasher>::default();
        let mut buckets = vec![0u32; 4096];
        for page in 0..4096u64 {
            buckets[(build.hash_one(page << 12) & 0xfff) as usize] += 1;
        }
        let used = buckets.iter().filter(|&&n| n > 0).count();
        assert!(used > 2000, "only {used} of 4096 buckets used");
        assert!(*buckets.iter().max().unwrap() < 12);
    }
}
