//! Simulated meters: telegram bytes whose values move the way a house's do.
//!
//! The physics is simple but consistent: power follows a daily shape plus
//! appliance bursts, energy registers integrate power over the interval (so
//! totals never decrease and deltas match power), current is power over
//! voltage, and the Veitur hot-water submeter integrates flow into volume with
//! supply/return temperatures that sag while water runs.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Which meter to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Veitur (Iceland): Iskra IE.5 single phase, no CRC, legacy 0.9.1/0.9.2
    /// clock, hot-water/heat submeter on channel 1 with Veitur's own codes.
    Veitur,
    /// A Dutch DSMR 5.0.2 three-phase meter with gas on channel 1, with CRC.
    Dsmr5,
    /// A Belgian e-MUCS (Fluvius) meter with capacity tariff lines and gas on
    /// `24.2.3`, with CRC.
    Belgium,
}

impl Profile {
    /// The profile's config name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Profile::Veitur => "veitur",
            Profile::Dsmr5 => "dsmr5",
            Profile::Belgium => "belgium",
        }
    }

    /// The IANA zone of the imitated meter's clock.
    pub fn time_zone(&self) -> &'static str {
        match self {
            Profile::Veitur => "Atlantic/Reykjavik",
            Profile::Dsmr5 => "Europe/Amsterdam",
            Profile::Belgium => "Europe/Brussels",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Profile> {
        match name {
            "veitur" => Some(Profile::Veitur),
            "dsmr5" => Some(Profile::Dsmr5),
            "belgium" => Some(Profile::Belgium),
            _ => None,
        }
    }
}

/// A simulated meter's state. [`SimulatedMeter::telegram`] advances it by one
/// interval and returns the telegram bytes.
#[derive(Debug, Clone)]
pub struct SimulatedMeter {
    profile: Profile,
    rng: u64,
    /// kWh, three decimals kept as integer Wh to avoid drift.
    import_wh: u64,
    export_wh: u64,
    /// Hot water in litres (m3 × 1000) and energy in Wh as sent.
    water_l: f64,
    heat: f64,
    gas_dm3: u64,
    shower_left_s: f64,
    burst_left_s: f64,
    burst_kw: f64,
}

impl SimulatedMeter {
    /// A meter with plausible starting registers; `seed` makes runs repeatable.
    pub fn new(profile: Profile, seed: u64) -> SimulatedMeter {
        SimulatedMeter {
            profile,
            rng: seed | 1,
            import_wh: 1_988_284,
            export_wh: 0,
            water_l: 366_475.0,
            heat: 19.078,
            gas_dm3: 9_916_665,
            shower_left_s: 0.0,
            burst_left_s: 0.0,
            burst_kw: 0.0,
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: fast, deterministic, good enough for load shapes.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Advances the meter by `interval_s` seconds ending at `now` (UTC) and
    /// returns the telegram the meter would send then.
    pub fn telegram(
        &mut self,
        now: jiff::Timestamp,
        interval_s: f64,
        local: &jiff::tz::TimeZone,
    ) -> Vec<u8> {
        let civil = local.to_datetime(now);
        let hour = f64::from(civil.hour()) + f64::from(civil.minute()) / 60.0;
        // Base load with an evening peak, plus appliance bursts (kettle, oven).
        let base = 0.25
            + 0.35
                * (std::f64::consts::PI * (hour - 13.0) / 12.0).cos().abs()
                * f64::from(u8::from((7.0..23.0).contains(&hour)));
        if self.burst_left_s <= 0.0 && self.random() < 0.03 * interval_s / 10.0 {
            self.burst_left_s = 60.0 + self.random() * 600.0;
            self.burst_kw = 1.0 + self.random() * 2.0;
        }
        let burst = if self.burst_left_s > 0.0 {
            self.burst_left_s -= interval_s;
            self.burst_kw
        } else {
            0.0
        };
        let power_kw = base + burst + 0.05 * self.random();
        let solar_kw = if self.profile == Profile::Veitur {
            0.0
        } else {
            (1.5 * (std::f64::consts::PI * (hour - 6.0) / 14.0).sin()).max(0.0)
                * (0.8 + 0.2 * self.random())
        };
        let (import_kw, export_kw) = if solar_kw > power_kw {
            (0.0, solar_kw - power_kw)
        } else {
            (power_kw - solar_kw, 0.0)
        };
        self.import_wh += (import_kw * interval_s / 3.6).round() as u64;
        self.export_wh += (export_kw * interval_s / 3.6).round() as u64;
        let voltage = 230.0 + 3.0 * (self.random() - 0.5) - 2.0 * import_kw;
        let current = (import_kw + export_kw) * 1000.0 / voltage;

        // Hot water: showers of a few minutes at ~0.5 m3/h, short taps otherwise.
        if self.shower_left_s <= 0.0 && self.random() < 0.01 * interval_s / 10.0 {
            self.shower_left_s = 180.0 + self.random() * 420.0;
        }
        let flow_m3h = if self.shower_left_s > 0.0 {
            self.shower_left_s -= interval_s;
            0.45 + 0.1 * self.random()
        } else if self.random() < 0.05 {
            0.09
        } else {
            0.0
        };
        self.water_l += flow_m3h * 1000.0 * interval_s / 3600.0;
        let supply = 75.0 - 1.5 * self.random() - if flow_m3h > 0.2 { 2.0 } else { 0.0 };
        let ret = if flow_m3h > 0.0 {
            28.0 + 4.0 * self.random()
        } else {
            35.0 + 2.0 * self.random()
        };
        self.heat += flow_m3h * interval_s / 3600.0 * (supply - ret) * 1.163 / 1000.0;
        self.gas_dm3 += if burst > 0.0 {
            (interval_s * 0.3) as u64
        } else {
            0
        };

        let mut t = String::with_capacity(1024);
        match self.profile {
            Profile::Veitur => {
                let line = |t: &mut String, s: std::fmt::Arguments<'_>| {
                    t.write_fmt(s).unwrap_or(());
                    t.push_str("\r\n");
                };
                line(&mut t, format_args!("/ISk5\\2MIE5E-200"));
                line(&mut t, format_args!(""));
                line(&mut t, format_args!("0-0:96.1.0(86818123)"));
                line(&mut t, format_args!("0-0:96.1.1(36303836383138313233)"));
                line(
                    &mut t,
                    format_args!(
                        "1-0:0.9.1({:02}{:02}{:02})",
                        civil.hour(),
                        civil.minute(),
                        civil.second()
                    ),
                );
                line(
                    &mut t,
                    format_args!(
                        "1-0:0.9.2({:02}{:02}{:02})",
                        civil.year() % 100,
                        civil.month(),
                        civil.day()
                    ),
                );
                line(&mut t, format_args!("1-0:1.7.0({:06.3}*kW)", import_kw));
                line(&mut t, format_args!("1-0:2.7.0({:06.3}*kW)", export_kw));
                line(
                    &mut t,
                    format_args!("1-0:31.7.0({:03.0}*A)", current.round()),
                );
                line(&mut t, format_args!("1-0:32.7.0({:05.1}*V)", voltage));
                line(
                    &mut t,
                    format_args!("1-0:1.8.0({:010.3}*kWh)", self.import_wh as f64 / 1000.0),
                );
                line(
                    &mut t,
                    format_args!("1-0:2.8.0({:010.3}*kWh)", self.export_wh as f64 / 1000.0),
                );
                line(&mut t, format_args!("1-0:21.7.0({:06.3}*kW)", import_kw));
                line(&mut t, format_args!("1-0:22.7.0({:06.3}*kW)", export_kw));
                line(
                    &mut t,
                    format_args!("0-1:24.2.1({:08.3}*m3)", self.water_l / 1000.0),
                );
                line(&mut t, format_args!("0-1:24.2.10(0000000)"));
                line(&mut t, format_args!("0-1:24.2.2({:08.3}*m3/h)", flow_m3h));
                line(&mut t, format_args!("0-1:24.2.3({:08.1}*degC)", supply));
                line(&mut t, format_args!("0-1:24.2.4({:08.1}*degC)", ret));
                line(&mut t, format_args!("0-1:24.2.5({:08.3}*Wh)", self.heat));
                line(&mut t, format_args!("0-1:24.2.6({:08.3}*Wh)", self.heat));
                t.push_str("!\r\n");
                t.into_bytes()
            }
            Profile::Dsmr5 | Profile::Belgium => {
                let dst = local.to_offset_info(now).dst().is_dst();
                let tst = format!(
                    "{:02}{:02}{:02}{:02}{:02}{:02}{}",
                    civil.year() % 100,
                    civil.month(),
                    civil.day(),
                    civil.hour(),
                    civil.minute(),
                    civil.second(),
                    if dst { 'S' } else { 'W' }
                );
                let belgium = self.profile == Profile::Belgium;
                let mut body = String::with_capacity(1024);
                let mut line = |s: String| {
                    body.push_str(&s);
                    body.push_str("\r\n");
                };
                if belgium {
                    line("/FLU5\\253769484_A".into());
                    line(String::new());
                    line("0-0:96.1.4(50217)".into());
                    line("0-0:96.1.1(3153414733313030373231333236)".into());
                } else {
                    line("/ISK5\\2M550T-1013".into());
                    line(String::new());
                    line("1-3:0.2.8(50)".into());
                }
                line(format!("0-0:1.0.0({tst})"));
                if !belgium {
                    line("0-0:96.1.1(4530303534303037363432313534323230)".into());
                }
                let half = |wh: u64| wh as f64 / 2000.0;
                line(format!("1-0:1.8.1({:010.3}*kWh)", half(self.import_wh)));
                line(format!("1-0:1.8.2({:010.3}*kWh)", half(self.import_wh)));
                line(format!("1-0:2.8.1({:010.3}*kWh)", half(self.export_wh)));
                line(format!("1-0:2.8.2({:010.3}*kWh)", half(self.export_wh)));
                line(format!(
                    "0-0:96.14.0({:04})",
                    if (7.0..23.0).contains(&hour) { 2 } else { 1 }
                ));
                if belgium {
                    line(format!("1-0:1.4.0({:06.3}*kW)", import_kw));
                }
                line(format!("1-0:1.7.0({:06.3}*kW)", import_kw));
                line(format!("1-0:2.7.0({:06.3}*kW)", export_kw));
                for (c, share) in [(21, 0.5), (41, 0.3), (61, 0.2)] {
                    line(format!("1-0:{c}.7.0({:06.3}*kW)", import_kw * share));
                }
                for (c, share) in [(22, 0.5), (42, 0.3), (62, 0.2)] {
                    line(format!("1-0:{c}.7.0({:06.3}*kW)", export_kw * share));
                }
                for c in [32, 52, 72] {
                    line(format!("1-0:{c}.7.0({:05.1}*V)", voltage));
                }
                for (c, share) in [(31, 0.5), (51, 0.3), (71, 0.2)] {
                    line(format!("1-0:{c}.7.0({:03.0}*A)", (current * share).round()));
                }
                line("0-1:24.1.0(003)".into());
                line("0-1:96.1.0(4730303339303031373434313432303137)".into());
                let gas_code = if belgium { "24.2.3" } else { "24.2.1" };
                line(format!(
                    "0-1:{gas_code}({tst})({:09.3}*m3)",
                    self.gas_dm3 as f64 / 1000.0
                ));
                body.push('!');
                let crc = p1_telegram::crc16_arc(body.as_bytes());
                write!(body, "{crc:04X}\r\n").unwrap_or(());
                body.into_bytes()
            }
        }
    }
}

/// A pseudo-terminal that plays a meter's serial port, for `p1gw simulate
/// --pty`: the slave side is linked at a path a reader opens like a device,
/// the simulator writes telegrams to the master side.
///
/// Made with `openpty` inside the serialport crate (no unsafe code here,
/// no socat). The slave stays open on our side too, so bytes written while
/// no reader has the port wait in the tty's input queue as on a real line;
/// a telegram still wholly unread at the next one is discarded first, since
/// a meter's bytes on an unconnected line are lost. The link is removed on
/// drop if it still points at this pty.
#[derive(Debug)]
pub struct MeterPty {
    master: tokio_serial::SerialStream,
    slave: tokio_serial::SerialStream,
    slave_name: String,
    link: PathBuf,
    last_len: usize,
}

impl MeterPty {
    /// Creates the pty and the symlink `link` to its slave. An existing
    /// symlink at `link` is replaced (a simulator killed before it could
    /// clean up leaves one); any other file there is an error.
    ///
    /// # Errors
    /// `openpty` failed, or `link` exists and is not a symlink, or it cannot
    /// be created.
    pub fn create(link: &Path) -> io::Result<MeterPty> {
        use tokio_serial::SerialPort as _;
        let (master, slave) = tokio_serial::SerialStream::pair().map_err(io::Error::from)?;
        let slave_name = slave
            .name()
            .ok_or_else(|| io::Error::other("the pty has no slave name"))?;
        match std::fs::symlink_metadata(link) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a symlink", link.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&slave_name, link)?;
        Ok(MeterPty {
            master,
            slave,
            slave_name,
            link: link.to_path_buf(),
            last_len: 0,
        })
    }

    /// The slave's device name (`/dev/pts/N`).
    pub fn slave_name(&self) -> &str {
        &self.slave_name
    }

    /// Sends `bytes` as the meter; false when they were dropped because the
    /// line stayed blocked for `within` (nobody reads and the queue is full).
    ///
    /// # Errors
    /// Writing to the pty failed.
    pub async fn send(&mut self, bytes: &[u8], within: std::time::Duration) -> io::Result<bool> {
        use tokio::io::AsyncWriteExt as _;
        use tokio_serial::SerialPort as _;
        let unread = self.slave.bytes_to_read().map_err(io::Error::from)? as usize;
        if self.last_len > 0 && unread >= self.last_len {
            // Nobody read the previous telegram: the line is not connected.
            self.slave
                .clear(tokio_serial::ClearBuffer::Input)
                .map_err(io::Error::from)?;
        }
        self.last_len = bytes.len();
        match tokio::time::timeout(within, self.master.write_all(bytes)).await {
            Ok(result) => result.map(|()| true),
            Err(_elapsed) => Ok(false),
        }
    }
}

impl Drop for MeterPty {
    fn drop(&mut self) {
        let ours = std::fs::read_link(&self.link)
            .is_ok_and(|target| target.as_os_str() == self.slave_name.as_str());
        if ours {
            // Best effort: the link may be gone already.
            std::fs::remove_file(&self.link).unwrap_or(());
        }
    }
}
