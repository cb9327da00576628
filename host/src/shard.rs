//! CommCare's sharding of its primary database: documents are spread over
//! 2^N logical shards by a hash of their id, and the shards are mapped in
//! contiguous ranges onto a few PostgreSQL databases (CommCare's
//! `PARTITION_DATABASE_CONFIG`, or `PLPROXY.SHARDS` per database).
//!
//! The hash is CommCare's (`ShardAccessor.hash_doc_id_python` in
//! `corehq/form_processor/backends/sql/dbaccessors.py`, matching
//! PL/Proxy's `hash_string(doc_id, 'siphash24')`): SipHash-2-4 with a key
//! of 16 zero bytes over the id's UTF-8 bytes, its 64-bit result cut to
//! the low 32 bits; the shard is that hash masked by `shard count - 1`.
//! The map's rules are CommCare's too (`PlProxyConfig.validate`): ranges
//! start at 0, follow one another without gaps, and the shard count is a
//! power of two.
//!
//! This module only routes ids; fetching documents is [`crate::source`].

use serde::Deserialize;
use std::collections::BTreeMap;

/// CommCare's shard hash of a document id (see the module docs).
pub fn hash_doc_id(id: &[u8]) -> u32 {
    // The low 32 bits, as CommCare keeps them to match PostgreSQL's int.
    (siphash24(0, 0, id) & 0xffff_ffff) as u32
}

/// SipHash-2-4 (Aumasson and Bernstein) of `data` under the key whose
/// little-endian halves are `k0` and `k1`.
fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |m: u64, v: &mut [u64; 4]| {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    };
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        compress(u64::from_le_bytes(w.try_into().expect("8 bytes")), &mut v);
    }
    // The last word: the remaining bytes, little-endian, with the input
    // length (mod 256) in the top byte.
    let mut last = (data.len() as u64) << 56;
    for (i, b) in words.remainder().iter().enumerate() {
        last |= u64::from(*b) << (8 * i);
    }
    compress(last, &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Why a shard map is refused (CommCare's own checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// No database.
    #[error(
        "the shard map names no database: give each database its range of shards, e.g. p1 = [0, 511], p2 = [512, 1023]"
    )]
    Empty,
    /// A range ends before it starts.
    #[error("database {database}: shard range [{start}, {end}] ends before it starts")]
    Backwards {
        /// The database.
        database: String,
        /// First shard.
        start: u32,
        /// Last shard.
        end: u32,
    },
    /// The lowest range does not start at 0.
    #[error(
        "shard numbering must start at 0; the lowest range (database {database}) starts at {start}"
    )]
    NotZeroStart {
        /// The database.
        database: String,
        /// Its first shard.
        start: u32,
    },
    /// A gap or an overlap between two ranges.
    #[error(
        "shards must be numbered consecutively: database {before} ends at {end}, database {after} starts at {start}"
    )]
    NotContinuous {
        /// The database with the lower range.
        before: String,
        /// Its last shard.
        end: u32,
        /// The next database.
        after: String,
        /// Its first shard.
        start: u32,
    },
    /// The shard count is not a power of two.
    #[error("the total number of shards must be a power of 2, found {count}")]
    NotPowerOfTwo {
        /// Shards in all.
        count: u64,
    },
}

/// Which database holds which shards: validated, in shard order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, [u32; 2]>")]
pub struct ShardMap {
    /// `shard count - 1` (the count is a power of two).
    mask: u32,
    /// (database, last shard), by first shard; the first starts at 0.
    ranges: Vec<(String, u32)>,
}

impl TryFrom<BTreeMap<String, [u32; 2]>> for ShardMap {
    type Error = ShardMapError;

    fn try_from(map: BTreeMap<String, [u32; 2]>) -> Result<ShardMap, ShardMapError> {
        let mut ranges: Vec<(String, u32, u32)> = map
            .into_iter()
            .map(|(database, [start, end])| (database, start, end))
            .collect();
        for (database, start, end) in &ranges {
            if end < start {
                return Err(ShardMapError::Backwards {
                    database: database.clone(),
                    start: *start,
                    end: *end,
                });
            }
        }
        ranges.sort_by_key(|(_, start, end)| (*start, *end));
        let Some((first, start, _)) = ranges.first() else {
            return Err(ShardMapError::Empty);
        };
        if *start != 0 {
            return Err(ShardMapError::NotZeroStart {
                database: first.clone(),
                start: *start,
            });
        }
        for pair in ranges.windows(2) {
            let ((before, _, end), (after, start, _)) = (&pair[0], &pair[1]);
            if u64::from(*end) + 1 != u64::from(*start) {
                return Err(ShardMapError::NotContinuous {
                    before: before.clone(),
                    end: *end,
                    after: after.clone(),
                    start: *start,
                });
            }
        }
        let count = u64::from(ranges.last().map_or(0, |(_, _, end)| *end)) + 1;
        if !count.is_power_of_two() {
            return Err(ShardMapError::NotPowerOfTwo { count });
        }
        Ok(ShardMap {
            mask: (count - 1) as u32,
            ranges: ranges.into_iter().map(|(d, _, end)| (d, end)).collect(),
        })
    }
}

impl ShardMap {
    /// The shard of document `id`.
    pub fn shard_of(&self, id: &str) -> u32 {
        hash_doc_id(id.as_bytes()) & self.mask
    }

    /// The database holding document `id`.
    pub fn database_of(&self, id: &str) -> &str {
        &self.ranges[self.position_of(id)].0
    }

    /// The databases, in shard order.
    pub fn databases(&self) -> impl Iterator<Item = &str> {
        self.ranges.iter().map(|(d, _)| d.as_str())
    }

    /// `ids` grouped by the database holding them: each database's
    /// position in [`ShardMap::databases`] with its ids (databases in
    /// shard order, ids in the order given; databases holding none left
    /// out).
    pub fn group<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<(usize, Vec<&'a str>)> {
        let mut groups: Vec<Vec<&'a str>> = vec![Vec::new(); self.ranges.len()];
        for id in ids {
            groups[self.position_of(id)].push(id);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }

    /// The position of the database holding `id`.
    fn position_of(&self, id: &str) -> usize {
        let shard = self.shard_of(id);
        self.ranges.partition_point(|(_, end)| *end < shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[(&str, [u32; 2])]) -> Result<ShardMap, ShardMapError> {
        ShardMap::try_from(
            ranges
                .iter()
                .map(|(d, r)| ((*d).to_owned(), *r))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    /// The paper's test vector (appendix A): key 00..0f, message 00..0e.
    #[test]
    fn siphash_matches_the_paper() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &message), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn the_hash_is_commcares() {
        // corehq/form_processor/tests/test_sharding.py, test_hash_uuid:
        // the 16 bytes of UUID 403724ef-9fe1-41f2-9083-63918c62c2ff.
        let uuid = [
            0x40, 0x37, 0x24, 0xef, 0x9f, 0xe1, 0x41, 0xf2, 0x90, 0x83, 0x63, 0x91, 0x8c, 0x62,
            0xc2, 0xff,
        ];
        assert_eq!(hash_doc_id(&uuid), 1_415_444_857);
        // String ids hash their UTF-8 bytes; values from the `csiphash`
        // package (0.0.5) CommCare hashes with: siphash24(16 zero bytes, id),
        // unpacked "<Q", masked with 0xffffffff.
        for (id, hash) in [
            ("0", 882_925_130),
            ("1", 3_146_605_522),
            ("abc", 1_198_583_518),
            ("f2b3c0b5-6d2e-4b0a-9e1c-000000000001", 3_630_061_150),
            ("403724ef9fe141f2908363918c62c2ff", 1_414_919_873),
        ] {
            assert_eq!(hash_doc_id(id.as_bytes()), hash, "{id}");
        }
    }

    #[test]
    fn ids_go_to_the_database_holding_their_shard() {
        let m = map(&[("p1", [0, 511]), ("p2", [512, 1023])]).unwrap();
        let ids: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        let names: Vec<&str> = m.databases().collect();
        let groups = m.group(ids.iter().map(String::as_str));
        assert_eq!(groups.len(), 2);
        for (at, ids) in &groups {
            let db = names[*at];
            for id in ids {
                assert_eq!(m.database_of(id), db);
                let shard = m.shard_of(id);
                assert_eq!(db, if shard < 512 { "p1" } else { "p2" }, "{id}");
            }
        }
        // Spread evenly within 5%, as CommCare's own distribution test asks.
        let p1 = groups[0].1.len() as i64;
        assert!((p1 - 1000).abs() < 100, "{p1} of 2000 in p1");
    }

    #[test]
    fn maps_are_checked_as_commcare_checks_them() {
        let five = map(&[
            ("p1", [0, 204]),
            ("p2", [205, 409]),
            ("p3", [410, 614]),
            ("p4", [615, 819]),
            ("p5", [820, 1023]),
        ])
        .unwrap();
        assert_eq!(five.databases().count(), 5);
        assert_eq!(map(&[]), Err(ShardMapError::Empty));
        assert!(matches!(
            map(&[("a", [1, 4])]),
            Err(ShardMapError::NotZeroStart { start: 1, .. })
        ));
        assert!(matches!(
            map(&[("a", [0, 3]), ("b", [5, 7])]),
            Err(ShardMapError::NotContinuous {
                end: 3,
                start: 5,
                ..
            })
        ));
        assert!(matches!(
            map(&[("a", [0, 3]), ("b", [3, 7])]),
            Err(ShardMapError::NotContinuous { .. })
        ));
        assert_eq!(
            map(&[("a", [0, 2])]),
            Err(ShardMapError::NotPowerOfTwo { count: 3 })
        );
        assert!(matches!(
            map(&[("a", [3, 0])]),
            Err(ShardMapError::Backwards { .. })
        ));
        let one = map(&[("only", [0, 0])]).unwrap();
        assert_eq!(one.database_of("anything"), "only");
    }
}
