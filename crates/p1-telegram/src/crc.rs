//! CRC-16/ARC as P1 telegrams use it.

/// CRC-16/ARC (poly 0x8005 reflected, init 0, no final XOR), slice-by-16
/// tables: about 10× faster than the byte-wise table other P1 parsers use.
static ARC: crc::Crc<u16, crc::Table<16>> = crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_ARC);

/// CRC-16/ARC of `bytes`. A telegram's CRC covers every byte from `/`
/// through `!`, line ends included.
pub fn crc16_arc(bytes: &[u8]) -> u16 {
    ARC.checksum(bytes)
}

/// CRC-16/ARC of `bytes` as if every bare LF were CR LF: the CRC a meter
/// computed before something on the way dropped the CRs.
pub fn crc16_arc_crlf(bytes: &[u8]) -> u16 {
    let mut digest = ARC.digest();
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', bytes) {
        if lf == 0 || bytes[lf - 1] != b'\r' {
            digest.update(&bytes[start..lf]);
            digest.update(b"\r");
            start = lf;
        }
    }
    digest.update(&bytes[start..]);
    digest.finalize()
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
