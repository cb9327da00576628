//! Byte comparison for Wasm guests: `memcmp` a word at a time.
//!
//! Rust lowers `==` on strings and byte slices, and `match` on string
//! literals, to calls of `memcmp` whenever the lengths are equal (natively
//! LLVM inlines short constant compares; for Wasm it does not). The
//! `memcmp` that wasi-libc links into a guest compares one byte per loop
//! iteration, and under wasmtime every iteration also pays fuel metering
//! and an epoch check: about twenty machine instructions per byte. A
//! processor compares keys on every change (case-search matches each
//! top-level field name), so the SDK defines the symbol itself on `wasm32`,
//! and the linker takes it instead of libc's. [`compare`] is plain Rust so
//! it is tested natively against slice ordering.

#[cfg(any(target_arch = "wasm32", test))]
use core::ptr::read_unaligned;

/// Compare `n` bytes at `a` and `b` as unsigned bytes, like C's `memcmp`:
/// negative if `a` sorts first, zero if equal, positive if `b` sorts first.
///
/// Eight bytes per step, then four, two and one for what is left; on a
/// differing word, the first differing byte comes from the lowest set bit
/// of the two words' XOR (loads are little-endian on Wasm and x86). No
/// loop compares single bytes, so the compiler has no byte-compare idiom
/// to turn back into a call of `memcmp` (this function).
///
/// # Safety
///
/// `a` and `b` must each be valid for reads of `n` bytes.
#[cfg(any(target_arch = "wasm32", test))]
#[inline]
unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    // If a word of type `$t` fits at `i`, compare it: return at a
    // difference, step past it when equal.
    macro_rules! word {
        ($t:ty) => {
            if i + size_of::<$t>() <= n {
                // SAFETY: `i + size_of::<$t>() <= n`, and the caller
                // guarantees `n` readable bytes at both pointers.
                let (x, y) = unsafe {
                    (
                        read_unaligned(a.add(i).cast::<$t>()),
                        read_unaligned(b.add(i).cast::<$t>()),
                    )
                };
                if x != y {
                    let k = i + ((x ^ y).trailing_zeros() / 8) as usize;
                    // SAFETY: `k` is inside the word just read.
                    return unsafe { i32::from(*a.add(k)) - i32::from(*b.add(k)) };
                }
                i += size_of::<$t>();
            }
        };
    }
    while i + 8 <= n {
        word!(u64);
    }
    word!(u32);
    word!(u16);
    if i < n {
        // SAFETY: `i < n`.
        return unsafe { i32::from(*a.add(i)) - i32::from(*b.add(i)) };
    }
    0
}

/// C's `memcmp` for the guest, in place of wasi-libc's byte loop.
///
/// # Safety
///
/// As C's `memcmp`: `a` and `b` valid for reads of `n` bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract is `compare`'s.
    unsafe { compare(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering;

    fn sign(a: &[u8], b: &[u8]) -> Ordering {
        assert_eq!(a.len(), b.len());
        // SAFETY: both slices hold `a.len()` bytes.
        unsafe { compare(a.as_ptr(), b.as_ptr(), a.len()) }.cmp(&0)
    }

    #[test]
    fn orders_like_slices_at_every_length_and_position() {
        // Every length up to three words, with a single difference at every
        // position, both ways round, and bytes on both sides of 0x80 (a
        // signed comparison would order them wrongly).
        for n in 0..=24 {
            let base: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            assert_eq!(sign(&base, &base), Ordering::Equal, "n={n}");
            for pos in 0..n {
                for delta in [1u8, 0x7f, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[pos] = other[pos].wrapping_add(delta);
                    assert_eq!(
                        sign(&base, &other),
                        base.cmp(&other),
                        "n={n} pos={pos} delta={delta}"
                    );
                    assert_eq!(sign(&other, &base), other.cmp(&base));
                }
            }
        }
    }

    #[test]
    fn the_first_difference_decides_when_several_differ() {
        // A later byte that differs the other way must not win, inside one
        // word and across words.
        for n in 2..=24 {
            for first in 0..n - 1 {
                for second in first + 1..n {
                    let a = vec![0x40u8; n];
                    let mut b = a.clone();
                    b[first] = 0x41; // b sorts after a here ...
                    b[second] = 0x00; // ... though it is smaller later
                    assert_eq!(sign(&a, &b), Ordering::Less, "n={n} {first} {second}");
                    assert_eq!(sign(&b, &a), Ordering::Greater);
                }
            }
        }
    }

    #[test]
    fn unaligned_starts() {
        let text = b"xxcase_json case_jsom case_json";
        for (i, j, n) in [(2, 22, 9), (2, 12, 9), (3, 23, 8), (1, 11, 10)] {
            assert_eq!(
                sign(&text[i..i + n], &text[j..j + n]),
                text[i..i + n].cmp(&text[j..j + n]),
                "{i} {j} {n}"
            );
        }
    }
}
