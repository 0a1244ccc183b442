//! `check-config`'s read-only look at this machine: do the files, devices and directories a
//! valid configuration names exist, and may p1gw use them?
//!
//! Read-only means: metadata is read, and regular files named as inputs (recordings, secrets,
//! certificates) are opened and read. A serial device or GPIO chip is never opened (opening a
//! tty raises its RTS and DTR lines, which may ask the meter for a telegram); nothing is
//! created, written, bound or connected to. Whether a directory can be written is judged from
//! its permission bits and the process's user and groups (from `/proc/self/status`); where that
//! is unknown, it is not reported.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::ValidConfig;
use super::error::{ConfigError, ErrorKind};
use super::locate::{KeyPath, Problems};
use super::secret::SecretSource;
use super::sink::ClientCert;
use super::source::{LineKind, ValidSource};

const READ: u32 = 0o4;
const WRITE: u32 = 0o2;
const SEARCH: u32 = 0o1;

/// Checks that what `config` names on this machine is there and usable, without changing
/// anything: the replay recording, secret and certificate files are readable (secrets are read,
/// never shown), serial devices and GPIO chips exist with permission to use them, the JSON-lines
/// files and the spool directory can be written or created. Never connects, never binds.
///
/// Returns every problem found, in file order; empty when all is well.
pub fn check(config: &ValidConfig) -> Vec<ConfigError> {
    let mut checker = Checker {
        problems: Problems::default(),
        user: User::current(),
    };
    for meter in &config.meters {
        let at = meter.form.source_path();
        match &meter.source {
            ValidSource::Serial(serial) => {
                checker.serial_port(&serial.port, &at.key("port"));
                if let LineKind::Gpio { chip, .. } = &serial.request.line {
                    checker.gpio_chip(chip, &at.key("request").key("line"));
                }
            }
            ValidSource::Replay(replay) => checker.recording(&replay.path, &at.key("path")),
            ValidSource::Tcp(_) | ValidSource::Simulate(_) => {}
        }
    }
    for sink in &config.sinks {
        sink.check(&mut checker);
    }
    let http = KeyPath::root().key("http");
    checker.secret(config.http.token.as_ref(), &http.key("token_file"));
    checker.directory(&config.spool.dir, &KeyPath::root().key("spool").key("dir"));
    checker
        .problems
        .into_errors(&config.origin, ErrorKind::Check)
}

/// The checks, for each sink's [`Planned::check`](super::sink::Planned::check).
pub struct Checker {
    problems: Problems,
    user: Option<User>,
}

impl Checker {
    /// Whether the user may access `meta` as `want` (`READ | WRITE` …); `true` when unknown.
    fn may(&self, meta: &Metadata, want: u32) -> bool {
        self.user.as_ref().is_none_or(|user| user.may(meta, want))
    }

    fn serial_port(&mut self, port: &Path, at: &KeyPath) {
        match std::fs::metadata(port) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => self.problems.value(
                at.clone(),
                format!(
                    "{}: no such device; is the P1 cable plugged in? `ls -l /dev/serial/by-id/` lists serial devices by names that survive replugging",
                    port.display()
                ),
            ),
            Err(error) => self
                .problems
                .value(at.clone(), format!("{}: {error}", port.display())),
            Ok(meta) if !meta.file_type().is_char_device() => self.problems.value(
                at.clone(),
                format!("{}: not a serial device (not a character device)", port.display()),
            ),
            Ok(meta) if !self.may(&meta, READ | WRITE) => self.problems.value(
                at.clone(),
                format!(
                    "{}: no permission to read and write it; add the user p1gw runs as to the device's group (group id {}, usually dialout)",
                    port.display(),
                    meta.gid()
                ),
            ),
            Ok(_) => {}
        }
    }

    fn gpio_chip(&mut self, chip: &str, at: &KeyPath) {
        let path = if chip.contains('/') {
            PathBuf::from(chip)
        } else {
            Path::new("/dev").join(chip)
        };
        match std::fs::metadata(&path) {
            Err(error) => self.problems.value(
                at.clone(),
                format!(
                    "GPIO chip {}: {error}; `ls /dev/gpiochip*` lists the chips",
                    path.display()
                ),
            ),
            Ok(meta) if !self.may(&meta, READ | WRITE) => self.problems.value(
                at.clone(),
                format!(
                    "GPIO chip {}: no permission to use it; add the user p1gw runs as to its group (group id {}, usually gpio)",
                    path.display(),
                    meta.gid()
                ),
            ),
            Ok(_) => {}
        }
    }

    /// A file p1gw reads: it must be a regular file that can be opened for reading.
    pub(crate) fn input_file(&mut self, path: &Path, at: &KeyPath) {
        let problem = match std::fs::metadata(path) {
            Err(error) => Some(error.to_string()),
            Ok(meta) if !meta.is_file() => Some("not a regular file".to_owned()),
            // Opening for reading changes nothing.
            Ok(_) => File::open(path).err().map(|error| error.to_string()),
        };
        if let Some(problem) = problem {
            self.problems
                .value(at.clone(), format!("{}: {problem}", path.display()));
        }
    }

    /// A replay's recording: a readable file, a directory that can be listed, or `-` (standard
    /// input, nothing to check).
    fn recording(&mut self, path: &Path, at: &KeyPath) {
        if path == Path::new("-") {
            return;
        }
        let problem = match std::fs::metadata(path) {
            Err(error) => Some(error.to_string()),
            Ok(meta) if meta.is_dir() => std::fs::read_dir(path).err().map(|e| e.to_string()),
            Ok(meta) if !meta.is_file() => Some("not a regular file or a directory".to_owned()),
            // Opening for reading changes nothing.
            Ok(_) => File::open(path).err().map(|error| error.to_string()),
        };
        if let Some(problem) = problem {
            self.problems
                .value(at.clone(), format!("{}: {problem}", path.display()));
        }
    }

    /// A secret from a file must be readable and not empty; one from the environment is there.
    pub(crate) fn secret(&mut self, source: Option<&SecretSource>, at: &KeyPath) {
        let Some(source) = source else { return };
        let SecretSource::File(path) = source else {
            return;
        };
        // The content is read and dropped; only the error (which never holds it) is shown.
        if let Err(error) = source.read() {
            self.problems
                .value(at.clone(), format!("{}: {error}", path.display()));
        }
    }

    pub(crate) fn client_cert(&mut self, cert: Option<&ClientCert>, at: &KeyPath) {
        if let Some(cert) = cert {
            self.input_file(&cert.cert_file, &at.key("client_cert_file"));
            self.input_file(&cert.key_file, &at.key("client_key_file"));
        }
    }

    /// A file p1gw appends to: an existing regular file it may write, or one it may create.
    pub(crate) fn output_file(&mut self, path: &Path, at: &KeyPath) {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => self.problems.value(
                at.clone(),
                format!("{}: not a regular file", path.display()),
            ),
            Ok(meta) if !self.may(&meta, WRITE) => self.problems.value(
                at.clone(),
                format!("{}: no permission to write it", path.display()),
            ),
            Ok(_) => {}
            Err(_) => {
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                self.creatable(parent, path, at);
            }
        }
    }

    /// A directory p1gw writes in: it exists and may be written, or can be created.
    fn directory(&mut self, dir: &Path, at: &KeyPath) {
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => self
                .problems
                .value(at.clone(), format!("{}: not a directory", dir.display())),
            Ok(meta) if !self.may(&meta, WRITE | SEARCH) => self.problems.value(
                at.clone(),
                format!("{}: no permission to write in it", dir.display()),
            ),
            Ok(_) => {}
            Err(_) => self.creatable(dir, dir, at),
        }
    }

    /// `target` does not exist: the nearest existing ancestor of `dir` (itself included) must
    /// be a directory p1gw may write in, so it can create the rest.
    fn creatable(&mut self, dir: &Path, target: &Path, at: &KeyPath) {
        let mut ancestor = Some(dir);
        while let Some(candidate) = ancestor {
            let candidate = if candidate.as_os_str().is_empty() {
                Path::new(".")
            } else {
                candidate
            };
            match std::fs::metadata(candidate) {
                Ok(meta) if !meta.is_dir() => {
                    self.problems.value(
                        at.clone(),
                        format!(
                            "cannot create {}: {} is not a directory",
                            target.display(),
                            candidate.display()
                        ),
                    );
                    return;
                }
                Ok(meta) => {
                    if !self.may(&meta, WRITE | SEARCH) {
                        self.problems.value(
                            at.clone(),
                            format!(
                                "cannot create {}: no permission to write in {}",
                                target.display(),
                                candidate.display()
                            ),
                        );
                    }
                    return;
                }
                Err(_) => ancestor = candidate.parent(),
            }
        }
    }
}

/// The process's effective user and groups.
struct User {
    uid: u32,
    gids: Vec<u32>,
}

impl User {
    /// From `/proc/self/status`; `None` where there is no such file.
    fn current() -> Option<User> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|n| n.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
        };
        // "Uid:" and "Gid:" list real, effective, saved and filesystem ids.
        let uid = *field("Uid:")?.get(1)?;
        let mut gids = field("Groups:").unwrap_or_default();
        gids.push(*field("Gid:")?.get(1)?);
        Some(User { uid, gids })
    }

    /// Whether this user may access a file with `meta` as `want`, by its permission bits.
    /// Root may do anything (a read-only mount is not detected).
    fn may(&self, meta: &Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        } & 0o7;
        bits & want == want
    }
}
