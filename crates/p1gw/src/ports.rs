//! Finding the P1 cable without touching anything else: `p1gw probe --list` and
//! `p1gw probe --write-config`.
//!
//! A Raspberry Pi next to Home Assistant often has a Zigbee or Z-Wave coordinator plugged in,
//! and those sit on the same USB-serial chips as P1 cables (the Sonoff ZBDongle-P is a
//! CP2102N). Opening such a port, or toggling its RTS/DTR lines, can put the radio into its
//! bootloader. So p1gw never picks a port by itself: the packaged configuration names none,
//! `--list` reads only names (`/dev/serial/by-id/`) and sysfs attributes and opens nothing,
//! and `probe` refuses a port that looks like a radio unless told `--force`.

use std::path::{Path, PathBuf};

/// One serial port as `--list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Port {
    /// The stable name under `/dev/serial/by-id/`.
    pub(crate) by_id: PathBuf,
    /// The device it points to (`/dev/ttyUSB0`).
    pub(crate) device: PathBuf,
    /// USB vendor:product, when sysfs says.
    pub(crate) usb_id: Option<String>,
    /// The USB product string, when sysfs says.
    pub(crate) product: Option<String>,
    /// Why this looks like a radio coordinator, if it does.
    pub(crate) radio: Option<&'static str>,
}

/// Words in a by-id name or a USB product string that mark a Zigbee, Z-Wave or Thread radio
/// (and what to call it).
const RADIO_MARKS: &[(&str, &str)] = &[
    ("zigbee", "a Zigbee coordinator"),
    ("zbdongle", "a Zigbee coordinator"),
    ("conbee", "a Zigbee coordinator (ConBee)"),
    ("raspbee", "a Zigbee coordinator (RaspBee)"),
    ("skyconnect", "a Zigbee/Thread radio (SkyConnect)"),
    ("sky_connect", "a Zigbee/Thread radio (SkyConnect)"),
    (
        "connect_zbt",
        "a Zigbee/Thread radio (Home Assistant Connect ZBT)",
    ),
    ("sonoff", "a Sonoff radio dongle"),
    ("slzb", "a Zigbee coordinator (SMLIGHT)"),
    ("cc2652", "a Zigbee coordinator (CC2652)"),
    ("cc2531", "a Zigbee coordinator (CC2531)"),
    ("cc1352", "a Zigbee coordinator (CC1352)"),
    ("efr32", "a Zigbee/Thread radio (EFR32)"),
    ("z-wave", "a Z-Wave controller"),
    ("zwave", "a Z-Wave controller"),
    ("z_wave", "a Z-Wave controller"),
    ("zooz", "a Z-Wave controller (Zooz)"),
    ("aeotec", "a Z-Wave controller (Aeotec)"),
    ("zst10", "a Z-Wave controller (Zooz ZST10)"),
    ("husbzb", "a Zigbee/Z-Wave stick (Nortek HUSBZB)"),
    ("thread", "a Thread radio"),
];

/// Why `name` (a by-id name or a product string) looks like a radio, if it does.
pub(crate) fn radio_mark(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    RADIO_MARKS
        .iter()
        .find(|(mark, _)| lower.contains(mark))
        .map(|(_, what)| *what)
}

/// The serial ports under `<dev>/serial/by-id/`, with what `<sys>/class/tty/<tty>/device`
/// tells of their USB device. Opens no port.
pub(crate) fn list(dev: &Path, sys: &Path) -> Vec<Port> {
    let Ok(entries) = std::fs::read_dir(dev.join("serial/by-id")) else {
        return Vec::new();
    };
    let mut ports: Vec<Port> = entries
        .flatten()
        .map(|entry| {
            let by_id = entry.path();
            let device = std::fs::read_link(&by_id)
                .map(|target| by_id.parent().unwrap_or(dev).join(target))
                .and_then(|p| p.canonicalize().or(Ok::<_, std::io::Error>(p)))
                .unwrap_or_else(|_| by_id.clone());
            let tty = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let usb = usb_device(&sys.join("class/tty").join(&tty).join("device"));
            let read = |name: &str| {
                usb.as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join(name)).ok())
                    .map(|s| s.trim().to_owned())
            };
            let usb_id = read("idVendor")
                .zip(read("idProduct"))
                .map(|(v, p)| format!("{v}:{p}"));
            let product = read("product");
            let name = by_id.file_name().map(|n| n.to_string_lossy().into_owned());
            let radio = name
                .as_deref()
                .and_then(radio_mark)
                .or_else(|| product.as_deref().and_then(radio_mark));
            Port {
                by_id,
                device,
                usb_id,
                product,
                radio,
            }
        })
        .collect();
    ports.sort_by(|a, b| a.by_id.cmp(&b.by_id));
    ports
}

/// The USB device directory above a tty's `device` link: the first ancestor with `idVendor`.
fn usb_device(tty_device: &Path) -> Option<PathBuf> {
    let mut dir = tty_device.canonicalize().ok()?;
    for _ in 0..6 {
        if dir.join("idVendor").is_file() {
            return Some(dir);
        }
        dir = dir.parent()?.to_path_buf();
    }
    None
}

/// `--list`'s text.
pub(crate) fn render(ports: &[Port]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if ports.is_empty() {
        out.push_str(
            "no serial ports under /dev/serial/by-id/: plug in the P1 cable (a USB-serial \
             adapter) and list again\n",
        );
        return out;
    }
    // Writing to a String cannot fail.
    let mut w = |args: std::fmt::Arguments<'_>| out.write_fmt(args).unwrap_or(());
    for p in ports {
        w(format_args!(
            "{}\n    {}{}{}\n",
            p.by_id.display(),
            p.device.display(),
            p.usb_id
                .as_ref()
                .map(|id| format!(", USB {id}"))
                .unwrap_or_default(),
            p.product
                .as_ref()
                .map(|pr| format!(", {pr:?}"))
                .unwrap_or_default()
        ));
        match p.radio {
            Some(what) => {
                w(format_args!(
                    "    looks like {what}: not a P1 cable; p1gw will not probe it (opening it \
                     can reset the radio)\n"
                ));
            }
            None => {
                w(format_args!(
                    "    try: p1gw probe --port {} --write-config /etc/p1gw/p1gw.toml\n",
                    p.by_id.display()
                ));
            }
        }
    }
    out
}

/// Sets `port` and `preset` in the `[source]` table of the configuration text, replacing the
/// lines that set them (commented or not) or adding them after the table's header. Comments
/// and everything else stay as they are.
///
/// # Errors
///
/// A text without a `[source]` table (a multi-meter `[[meters]]` file: edit it by hand).
pub(crate) fn set_source(text: &str, port: &Path, preset: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "[source]")
        .ok_or("no [source] table (several meters? set `port` and `preset` by hand)")?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let key_of = |line: &str| -> Option<String> {
        let t = line.trim_start().trim_start_matches('#').trim_start();
        let (key, _) = t.split_once('=')?;
        let key = key.trim();
        (key == "port" || key == "preset").then(|| key.to_owned())
    };
    let port_line = format!("port = {:?}", port.display().to_string());
    let preset_line = format!("preset = {preset:?}");
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 2);
    let (mut port_done, mut preset_done) = (false, false);
    for (i, line) in lines.iter().enumerate() {
        if i > start && i < end {
            match key_of(line).as_deref() {
                Some("port") if !port_done => {
                    out.push(format!("{port_line}  # found by p1gw probe"));
                    port_done = true;
                    continue;
                }
                Some("preset") if !preset_done => {
                    out.push(format!("{preset_line}  # found by p1gw probe"));
                    preset_done = true;
                    continue;
                }
                _ => {}
            }
        }
        out.push((*line).to_owned());
        if i == start {
            // Placeholders, replaced below when the table has its own lines.
            out.push("\u{0}port".to_owned());
            out.push("\u{0}preset".to_owned());
        }
    }
    let mut edited: Vec<String> = Vec::with_capacity(out.len());
    for line in out {
        match line.as_str() {
            "\u{0}port" if !port_done => {
                edited.push(format!("{port_line}  # found by p1gw probe"));
            }
            "\u{0}preset" if !preset_done => {
                edited.push(format!("{preset_line}  # found by p1gw probe"));
            }
            "\u{0}port" | "\u{0}preset" => {}
            _ => edited.push(line),
        }
    }
    let mut joined = edited.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radios_are_told_by_name_or_product() {
        for name in [
            "usb-Itead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_V2_20231008-if00-port0",
            "usb-ITEAD_SONOFF_Zigbee_3.0_USB_Dongle_Plus_V2-if00",
            "usb-dresden_elektronik_ingenieurtechnik_GmbH_ConBee_II_DE123-if00",
            "usb-Nabu_Casa_SkyConnect_v1.0_abc-if00-port0",
            "usb-Silicon_Labs_Zooz_ZST10_700_Z-Wave_Stick-if00-port0",
        ] {
            assert!(radio_mark(name).is_some(), "{name}");
        }
        for name in [
            "usb-FTDI_FT232R_USB_UART_A10KZP45-if00-port0",
            "usb-1a86_USB2.0-Serial-if00-port0",
            "usb-Prolific_Technology_Inc._USB-Serial_Controller-if00-port0",
            "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0",
        ] {
            assert_eq!(radio_mark(name), None, "{name}");
        }
    }

    /// A fake /dev and /sys with a P1 cable (FTDI) and a Sonoff ZBDongle-P whose by-id name
    /// says nothing but whose USB product string does.
    #[test]
    fn list_reads_names_and_sysfs_and_flags_the_radio() {
        let root = tempfile::tempdir().expect("tempdir");
        let dev = root.path().join("dev");
        let sys = root.path().join("sys");
        std::fs::create_dir_all(dev.join("serial/by-id")).expect("mkdir");
        for (tty, vendor, product, name, by_id) in [
            (
                "ttyUSB0",
                "0403",
                "6001",
                "FT232R USB UART",
                "usb-FTDI_FT232R_USB_UART_A10KZP45-if00-port0",
            ),
            (
                "ttyUSB1",
                "10c4",
                "ea60",
                "Sonoff Zigbee 3.0 USB Dongle Plus",
                "usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_9e2a-if00-port0",
            ),
        ] {
            std::fs::write(dev.join(tty), "").expect("tty");
            std::os::unix::fs::symlink(
                format!("../../{tty}"),
                dev.join("serial/by-id").join(by_id),
            )
            .expect("by-id link");
            let usb = sys.join("devices/usb1").join(tty);
            let iface = usb.join("1-1:1.0");
            std::fs::create_dir_all(&iface).expect("sysfs");
            std::fs::write(usb.join("idVendor"), vendor).expect("vendor");
            std::fs::write(usb.join("idProduct"), product).expect("product");
            std::fs::write(usb.join("product"), format!("{name}\n")).expect("name");
            let class = sys.join("class/tty").join(tty);
            std::fs::create_dir_all(&class).expect("class");
            std::os::unix::fs::symlink(&iface, class.join("device")).expect("device link");
        }
        let ports = list(&dev, &sys);
        assert_eq!(ports.len(), 2);
        let cable = &ports[0];
        assert!(
            cable
                .by_id
                .ends_with("usb-FTDI_FT232R_USB_UART_A10KZP45-if00-port0")
        );
        assert_eq!(cable.usb_id.as_deref(), Some("0403:6001"));
        assert_eq!(cable.radio, None);
        let radio = &ports[1];
        assert_eq!(radio.usb_id.as_deref(), Some("10c4:ea60"));
        assert_eq!(radio.radio, Some("a Zigbee coordinator"));
        let text = render(&ports);
        assert!(text.contains("try: p1gw probe --port "), "{text}");
        assert!(text.contains("looks like a Zigbee coordinator"), "{text}");
        assert!(render(&[]).starts_with("no serial ports"));
    }

    #[test]
    fn the_source_table_gets_the_port_and_preset_and_nothing_else_changes() {
        let text = "[meter]\nname = \"home\"\n\n[source]\nkind = \"serial\"\n# port = \"/dev/serial/by-id/...\"   # set this\npreset = \"veitur\"  # a comment\n\n[http]\nlisten = \"127.0.0.1:9600\"\n";
        let out = set_source(
            text,
            Path::new("/dev/serial/by-id/usb-FTDI_X-if00"),
            "dsmr4",
        )
        .expect("edited");
        assert_eq!(
            out,
            "[meter]\nname = \"home\"\n\n[source]\nkind = \"serial\"\nport = \"/dev/serial/by-id/usb-FTDI_X-if00\"  # found by p1gw probe\npreset = \"dsmr4\"  # found by p1gw probe\n\n[http]\nlisten = \"127.0.0.1:9600\"\n"
        );
        // Without the keys: added after the header.
        let out = set_source(
            "[source]\nkind = \"serial\"\n",
            Path::new("/dev/x"),
            "veitur",
        )
        .expect("edited");
        assert_eq!(
            out,
            "[source]\nport = \"/dev/x\"  # found by p1gw probe\npreset = \"veitur\"  # found by p1gw probe\nkind = \"serial\"\n"
        );
        assert!(set_source("[[meters]]\nname = \"a\"\n", Path::new("/dev/x"), "veitur").is_err());
    }
}
