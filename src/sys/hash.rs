//! FNV-1a, 64 bits: a small stable hash for identities that must not change between builds
//! (job fingerprints, the seed of a job that names none). Not for security.

/// FNV-1a 64 of a byte stream.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // Reference values of FNV-1a 64.
        assert_eq!(super::fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
