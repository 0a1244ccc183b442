//! Word-at-a-time byte search for the short spans of a data line.
//!
//! A group's value is 1–160 bytes; a `memchr` call costs more than that to
//! set up, and a byte loop checks one byte per step. Here eight bytes are
//! read as one `u64` and tested for several bytes at once (SWAR: "SIMD within
//! a register"), in plain safe integer arithmetic.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte of a word.
#[inline(always)]
const fn splat(b: u8) -> u64 {
    ONES * b as u64
}

/// A word with the high bit set in the byte where `v` has a zero byte. Bytes
/// above a zero byte may be flagged too (the borrow runs upwards), but the
/// lowest flag is always exact: only `trailing_zeros` is used on the result.
#[inline(always)]
const fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// Index of the lowest flagged byte of a non-zero [`zero_bytes`] word.
#[inline(always)]
fn lowest(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

/// A word with the high bit set in every byte of `w` that is not an ASCII
/// digit. Exact per byte: no carry or borrow crosses a byte.
#[inline(always)]
const fn non_digits(w: u64) -> u64 {
    let low = w & !HIGHS;
    // low + 0x46 reaches 0x80 exactly from 0x3A (':') up; it cannot carry out.
    let above = (low + splat(0x46)) & HIGHS;
    // (low | 0x80) - 0x30 keeps the high bit exactly from 0x30 ('0') up.
    let below = !((low | HIGHS) - splat(b'0')) & HIGHS;
    above | below | (w & HIGHS)
}

/// The value of the eight digits in `w` (first digit in the lowest byte,
/// each byte already 0..=9): three multiplications instead of eight steps.
#[inline(always)]
const fn eight_digits(w: u64) -> u64 {
    // Pairs, then quadruples, then all eight (the usual SWAR reduction).
    // The products overflow on purpose: only the lanes kept matter.
    let w = w.wrapping_mul(10 << 8 | 1) >> 8;
    let w = (w & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 << 16 | 1) >> 16;
    ((w & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 << 32 | 1) >> 32) & 0xFFFF_FFFF
}

/// The leading decimal digits of `w` (its bytes in memory order): how many
/// there are (0..=8) and their value.
#[inline(always)]
pub(crate) fn leading_digits(w: u64) -> (usize, u64) {
    let count = lowest(non_digits(w)).min(8);
    // Keep the digits and move them to the top, zeros below: "12" reads as
    // "00000012". A shift by 64 (no digits) yields no digits.
    let digits = w.wrapping_sub(splat(b'0'));
    let aligned = digits.checked_shl(64 - 8 * count as u32).unwrap_or(0);
    (count, eight_digits(aligned & splat(0x0F)))
}

/// The end of a group's contents: the index of the first `)` in `s` (or of
/// the first `)` or `\n` when `stop_at_lf`), and the index of the first `*`
/// before it. `None` when no such end is in `s`.
#[inline(always)]
pub(crate) fn group_end(s: &[u8], stop_at_lf: bool) -> Option<(usize, Option<usize>)> {
    let mut star = None;
    let mut at = 0;
    // Most groups end within a few words (hex ids take four or five); longer
    // ones (the text message, up to 2 KiB) go on with memchr, which takes 32
    // bytes a step but costs more to start.
    while at < 48
        && let Some(chunk) = s[at..].first_chunk::<8>()
    {
        let w = u64::from_le_bytes(*chunk);
        let mut stop = zero_bytes(w ^ splat(b')'));
        if stop_at_lf {
            stop |= zero_bytes(w ^ splat(b'\n'));
        }
        let stars = zero_bytes(w ^ splat(b'*'));
        if star.is_none() && stars != 0 {
            star = Some(at + lowest(stars));
        }
        if stop != 0 {
            let end = at + lowest(stop);
            return Some((end, star.filter(|&i| i < end)));
        }
        at += 8;
    }
    long_group_end(s, at, stop_at_lf, star)
}

/// [`group_end`] from `at` on, for a long group: out of line, so that the
/// word loop for the common short groups stays small.
#[inline(never)]
fn long_group_end(
    s: &[u8],
    at: usize,
    stop_at_lf: bool,
    star: Option<usize>,
) -> Option<(usize, Option<usize>)> {
    let end_in = |from: usize| -> Option<usize> {
        let rest = &s[from..];
        Some(
            from + if stop_at_lf {
                memchr::memchr2(b')', b'\n', rest)?
            } else {
                memchr::memchr(b')', rest)?
            },
        )
    };
    if star.is_some() {
        return Some((end_in(at)?, star));
    }
    // One pass for the end and the star (a long group is text: no star).
    let rest = &s[at..];
    let first = at
        + if stop_at_lf {
            memchr::memchr3(b')', b'\n', b'*', rest)?
        } else {
            memchr::memchr2(b')', b'*', rest)?
        };
    if s[first] != b'*' {
        return Some((first, None));
    }
    Some((end_in(first + 1)?, Some(first)))
}

#[cfg(test)]
mod tests {
    use super::{group_end, leading_digits};
    use proptest::prelude::*;

    /// The byte-at-a-time definition.
    fn reference(s: &[u8], stop_at_lf: bool) -> Option<(usize, Option<usize>)> {
        let end = s
            .iter()
            .position(|&b| b == b')' || (stop_at_lf && b == b'\n'))?;
        Some((end, s[..end].iter().position(|&b| b == b'*')))
    }

    proptest! {
        #[test]
        fn group_end_agrees_with_a_byte_loop(
            s in proptest::collection::vec(prop_oneof![
                Just(b')'), Just(b'*'), Just(b'\n'), Just(b'('), Just(0u8), Just(0x80u8),
                Just(b')' ^ 0x80), Just(b'*' + 1), Just(b')' - 1), any::<u8>(), b'0'..=b'9',
                b'0'..=b'9', b'A'..=b'F', b'A'..=b'F',
            ], 0..120),
            stop_at_lf in any::<bool>(),
        ) {
            prop_assert_eq!(group_end(&s, stop_at_lf), reference(&s, stop_at_lf));
        }

        #[test]
        fn leading_digits_agrees_with_a_byte_loop(
            s in proptest::array::uniform8(prop_oneof![
                b'0'..=b'9', Just(b'/'), Just(b':'), Just(b'.'), Just(b'*'), Just(0u8),
                Just(0x80u8), Just(0xB0u8), Just(0xB9u8), any::<u8>(),
            ]),
        ) {
            let count = s.iter().take_while(|b| b.is_ascii_digit()).count();
            let value = s[..count].iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
            prop_assert_eq!(leading_digits(u64::from_le_bytes(s)), (count, value));
        }
    }
}
