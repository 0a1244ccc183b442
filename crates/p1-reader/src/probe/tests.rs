//! The probe's counting, the bit-7 analysis and the recommendation, on
//! fixtures and on bytes framed as each setting would deliver them; and one
//! preset probed on a real pty.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::*;
use crate::serial::LineFilter;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/telegrams")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tally(bytes: &[u8]) -> Tally {
    let mut t = Tally::new(16 * 1024);
    // In small pieces, as a port delivers them.
    for chunk in bytes.chunks(37) {
        t.consume(chunk);
    }
    t.finish();
    t
}

#[test]
fn the_tally_counts_telegrams_by_crc_and_rejects_by_reason() {
    let mut stream = b"line noise\r\n".to_vec();
    stream.extend(fixture("iceland_veitur_iskra_ie5e_antonp1.txt"));
    stream.extend(fixture("netherlands_iskra_am550_dsmr50.txt"));
    stream.extend(fixture("netherlands_sagemcom_t210d_corrupt.txt"));
    stream.extend(b"/XYZ5 cut off\r\n1-0:1.8.0(1\r\n");
    stream.extend(fixture("belgium_iskra_ie5e_single_phase.txt"));
    let t = tally(&stream);
    assert_eq!(t.frames, 4, "the cut-off frame is no frame");
    assert_eq!(t.telegrams, 3);
    assert_eq!((t.crc_valid, t.crc_absent, t.crc_mismatch), (2, 1, 1));
    assert_eq!(t.rejected.get("truncated"), Some(&1));
    assert_eq!(t.header.as_deref(), Some("ISk5\\2MIE5E-200"));
    assert_eq!(t.counters(), (3, 2));
}

/// `text` as a port opened for `opened` (9600 8N1 or 7N1) would deliver it
/// when the meter sends with `sent` framing, before the filter.
fn on_the_wire(text: &[u8], sent: Bit7) -> Vec<u8> {
    text.iter()
        .map(|&b| match sent {
            Bit7::StopBit => b | 0x80,
            Bit7::EvenParity if b.count_ones() % 2 == 1 => b | 0x80,
            Bit7::OddParity if b.count_ones() % 2 == 0 => b | 0x80,
            _ => b,
        })
        .collect()
}

fn stats_8n1(bytes: &[u8]) -> LineStats {
    let mut filter = LineFilter::new(&Preset::Dsmr22.settings());
    let mut bytes = bytes.to_vec();
    filter.apply(&mut bytes);
    filter.stats()
}

#[test]
fn bit_7_at_9600_8n1_tells_the_framing() {
    let text = fixture("iceland_veitur_iskra_ie5e_antonp1.txt");
    for sent in [
        Bit7::Clear,
        Bit7::StopBit,
        Bit7::EvenParity,
        Bit7::OddParity,
    ] {
        let stats = stats_8n1(&on_the_wire(&text, sent));
        assert_eq!(bit7_verdict(&stats), sent, "{sent:?}");
    }
    // Two glitches in a telegram do not change the verdict (98 % agree).
    let mut bytes = on_the_wire(&text, Bit7::EvenParity);
    bytes[3] ^= 0x80;
    bytes[30] ^= 0x80;
    assert_eq!(bit7_verdict(&stats_8n1(&bytes)), Bit7::EvenParity);
    // Noise.
    let noise: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert_eq!(bit7_verdict(&stats_8n1(&noise)), Bit7::Mixed);
    assert_eq!(bit7_verdict(&stats_8n1(&text[..40])), Bit7::TooFew);
    // Bytes read as 7 bits say nothing about bit 7.
    let mut filter = LineFilter::new(&Preset::Veitur.settings());
    filter.apply(&mut text.clone());
    assert_eq!(bit7_verdict(&filter.stats()), Bit7::TooFew);
}

fn report(preset: Preset, telegrams: u64, parity_errors: u64, sent: &[u8]) -> PresetReport {
    let settings = preset.settings();
    let mut filter = LineFilter::new(&settings);
    filter.apply(&mut sent.to_vec());
    let mut line = filter.stats();
    line.parity_errors = parity_errors;
    PresetReport {
        preset,
        settings,
        opened_as: settings.opened_as(),
        listened: Duration::from_secs(12),
        frames: telegrams,
        telegrams,
        crc_valid: 0,
        crc_absent: telegrams,
        crc_mismatch: 0,
        rejected: BTreeMap::new(),
        line,
        header: (telegrams > 0).then(|| "ISk5\\2MIE5E-200".to_owned()),
        ended: None,
        request_error: None,
    }
}

#[test]
fn on_a_pty_every_preset_decodes_and_8_bit_data_favours_dsmr4() {
    // A pty ignores line settings: every pass reads the 8-bit text; the 7E1
    // passes (opened 8N1) see wrong parity bits on half the bytes.
    let text = fixture("iceland_veitur_iskra_ie5e_antonp1.txt");
    let reports = [
        report(Preset::Veitur, 2, 0, &text),
        report(Preset::Veitur7e1, 2, 300, &text),
        report(Preset::Dsmr22, 2, 300, &text),
        report(Preset::Dsmr4, 2, 0, &text),
    ];
    assert_eq!(bit7_at_9600(&reports), Bit7::Clear);
    let (preset, why) = recommend(&reports).expect("a recommendation");
    assert_eq!(preset, Preset::Dsmr4, "{why}");
    assert!(why.contains("veitur did as well"), "{why}");
    assert!(!why.contains("dsmr22"), "{why}: it had parity errors");
    assert!(why.contains("bit 7 is always 0"), "{why}");
}

#[test]
fn a_7n1_meter_is_recommended_veitur() {
    let wire = on_the_wire(
        &fixture("iceland_veitur_iskra_ie5e_antonp1.txt"),
        Bit7::StopBit,
    );
    // Read as 7E1 (8N1 + software parity) the stop bit is a parity bit,
    // wrong for half the bytes, but the data bits are right.
    let reports = [
        report(Preset::Veitur, 2, 0, &wire),
        report(Preset::Veitur7e1, 2, 250, &wire),
        report(Preset::Dsmr22, 2, 250, &wire),
        report(Preset::Dsmr4, 0, 0, &[]),
    ];
    assert_eq!(bit7_at_9600(&reports), Bit7::StopBit);
    assert_eq!(recommend(&reports).expect("some").0, Preset::Veitur);
}

#[test]
fn a_7e1_meter_with_veiturs_header_is_recommended_veitur_7e1() {
    let wire = on_the_wire(
        &fixture("iceland_veitur_iskra_ie5e_antonp1.txt"),
        Bit7::EvenParity,
    );
    let reports = [
        // 7N1 on a 7E1 line: the parity bit lands where the stop bit should
        // be; where it is 0 the kernel drops the byte, telegrams break.
        report(Preset::Veitur, 0, 0, &[]),
        report(Preset::Veitur7e1, 2, 0, &wire),
        report(Preset::Dsmr22, 2, 0, &wire),
        report(Preset::Dsmr4, 0, 0, &[]),
    ];
    assert_eq!(bit7_at_9600(&reports), Bit7::EvenParity);
    assert_eq!(recommend(&reports).expect("some").0, Preset::Veitur7e1);
    let mut dutch = reports.clone();
    for r in &mut dutch {
        r.header = r.header.as_ref().map(|_| "ISk5\\2ME382-1003".to_owned());
    }
    assert_eq!(recommend(&dutch).expect("some").0, Preset::Dsmr22);
}

#[test]
fn clearly_more_telegrams_beat_the_bit_7_preference_but_one_more_does_not() {
    let text = fixture("iceland_veitur_iskra_ie5e_antonp1.txt");
    let reports = [
        report(Preset::Veitur, 10, 0, &text),
        report(Preset::Dsmr4, 5, 0, &text),
    ];
    assert_eq!(recommend(&reports).expect("some").0, Preset::Veitur);
    // One telegram more in a listening window is timing, not evidence: the
    // 9600 8N1 pass (dsmr22) shows 8-bit data.
    let reports = [
        report(Preset::Veitur, 5, 0, &text),
        report(Preset::Dsmr22, 5, 300, &text),
        report(Preset::Dsmr4, 4, 0, &text),
    ];
    assert_eq!(recommend(&reports).expect("some").0, Preset::Dsmr4);
}

#[test]
fn fewer_errors_beat_more_telegrams_within_the_margin() {
    let text = fixture("iceland_veitur_iskra_ie5e_antonp1.txt");
    let reports = [
        report(Preset::Veitur7e1, 5, 40, &text),
        report(Preset::Veitur, 4, 0, &text),
    ];
    assert_eq!(recommend(&reports).expect("some").0, Preset::Veitur);
}

#[test]
fn nothing_decoded_means_no_recommendation() {
    let reports: Vec<PresetReport> = Preset::ALL.iter().map(|p| report(*p, 0, 0, &[])).collect();
    assert_eq!(recommend(&reports), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_one_preset_on_a_pty_counts_what_arrived() {
    use tokio_serial::SerialPort as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("p1");
    let (mut master, slave) = tokio_serial::SerialStream::pair().expect("openpty");
    std::os::unix::fs::symlink(slave.name().expect("name"), &link).expect("symlink");
    drop(slave);
    let telegram = Arc::new(fixture("netherlands_iskra_am550_dsmr50.txt"));
    let stop = CancellationToken::new();
    // The meter: a telegram every 50 ms until the probe is done.
    let meter = {
        let (telegram, stop) = (telegram.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                master.write_all(&telegram).await.expect("write");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = probe_preset(
        &link,
        Preset::Dsmr4,
        &RequestConfig::default(),
        Duration::from_millis(700),
        16 * 1024,
        &CancellationToken::new(),
    )
    .await
    .expect("probe");
    stop.cancel();
    meter.await.expect("meter");
    assert!(r.telegrams >= 2, "{r:?}");
    assert_eq!(r.crc_valid, r.telegrams);
    assert_eq!((r.crc_mismatch, r.errors()), (0, 0), "{r:?}");
    assert!(r.line.bytes >= 2 * telegram.len() as u64);
    assert_eq!(r.header.as_deref(), Some("ISK5\\2M550T-1013"));
    assert!(r.listened >= Duration::from_millis(700));
    assert_eq!(r.ended, None);
}
