//! Which partition a (tenant, user) belongs to: the one function the store (leases, outbox rows)
//! and the uplink (JetStream's subject-transform partitioning of `_IN`) must agree on.
//!
//! nats-server's `{{partition(n, 2, 4)}}` transform hashes the bytes of the named wildcard tokens
//! concatenated with no separator, with 32-bit FNV-1a, modulo `n`; [`of`] is the same function, so
//! a message on `P.cec.<t>.up.<u>` is stored under the partition the database gives `(t, u)`.
//! A test in the relay checks the two against a real server.

/// The partition of `(tenant, user)` among `partitions` (at least 1). For a Tencent IM app, the
/// app's name is the tenant.
pub fn of(tenant: &str, user: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tenant.bytes().chain(user.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_32_of_the_concatenation() {
        // FNV-1a 32 reference values: "" = 0x811c9dc5, "a" = 0xe40c292c, "foobar" = 0xbf9cf968.
        assert_eq!(of("", "", u32::MAX), 0x811c_9dc5);
        assert_eq!(of("a", "", u32::MAX), 0xe40c_292c);
        assert_eq!(of("foo", "bar", u32::MAX), 0xbf9c_f968);
        assert_eq!(of("fo", "obar", 64), of("foo", "bar", 64));
    }

    #[test]
    fn always_below_the_count() {
        for u in 0..1000 {
            assert!(of("t", &format!("u{u}"), 64) < 64);
        }
        assert_eq!(of("t", "u", 0), 0);
        assert_eq!(of("t", "u", 1), 0);
    }
}
