//! CRC-16/ARC as P1 telegrams use it.

use crc_fast::CrcAlgorithm::Crc16Arc;

/// CRC-16/ARC (poly 0x8005 reflected, init 0, no final XOR) of `bytes`. A
/// telegram's CRC covers every byte from `/` through `!`, line ends included.
///
/// `crc-fast` folds 16 bytes per step with carry-less multiplication where
/// the CPU has it (x86-64 PCLMULQDQ, aarch64 PMULL; chosen at run time) and
/// uses a table otherwise: about 2.5× faster than slice-by-16 on a 1 KB
/// telegram, and about 25× faster than the byte-wise table other P1 parsers use.
pub fn crc16_arc(bytes: &[u8]) -> u16 {
    // CRC-16 results fit in 16 bits; the crate returns every width as u64.
    crc_fast::checksum(Crc16Arc, bytes) as u16
}

/// CRC-16/ARC of `bytes` as if every bare LF were CR LF: the CRC a meter
/// computed before something on the way dropped the CRs.
pub fn crc16_arc_crlf(bytes: &[u8]) -> u16 {
    let mut digest = crc_fast::Digest::new(Crc16Arc);
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', bytes) {
        if lf == 0 || bytes[lf - 1] != b'\r' {
            digest.update(&bytes[start..lf]);
            digest.update(b"\r");
            start = lf;
        }
    }
    digest.update(&bytes[start..]);
    digest.finalize() as u16
}

/// Parses the 1–4 hex digits after `!` (real meters sometimes drop leading
/// zeros). `Ok(None)` when there are none.
pub(crate) fn parse_crc_text(text: &[u8]) -> Result<Option<u16>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 4 {
        return Err(());
    }
    let mut value: u16 = 0;
    for &c in text {
        value = (value << 4) | u16::from(crate::value::hex_digit(c).ok_or(())?);
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalogue's check value, and agreement with the bit-by-bit
    /// definition on every length 0..300 (the folding code has separate paths
    /// for short inputs, 16-byte blocks and the tail).
    #[test]
    fn crc16_arc_matches_the_definition() {
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(
                crc16_arc(&data[..len]),
                bitwise(&data[..len]),
                "length {len}"
            );
        }
    }

    #[test]
    fn crlf_variant_inserts_the_missing_crs() {
        let bare = b"/ABC\n\n1-0:1.8.1(1*kWh)\r\n!";
        let full = b"/ABC\r\n\r\n1-0:1.8.1(1*kWh)\r\n!";
        assert_eq!(crc16_arc_crlf(bare), crc16_arc(full));
        assert_eq!(crc16_arc_crlf(full), crc16_arc(full));
    }

    fn bitwise(bytes: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in bytes {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }
}
