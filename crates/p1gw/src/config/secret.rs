//! Secrets: passwords, tokens and connection strings.
//!
//! A secret never sits in the configuration file itself. It comes from a file named by a
//! `*_file` key (read when the sink is built, and by `check-config` to see that it can be), or
//! from an environment variable:
//!
//! | variable | used for |
//! |---|---|
//! | `P1GW_HTTP_TOKEN` | the bearer token `[http]` requires |
//! | `P1GW_MQTT_PASSWORD`, `P1GW_INFLUX_PASSWORD`, … | each sink kind's own (see its file in `sink/`) |
//!
//! A variable that is set (and not empty) wins over the `*_file` key, so a container can
//! override the packaged configuration. The value is held in a [`Secret`], which prints as
//! `***` in `Debug` and `Display`, so neither logs nor error messages can show it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable for the HTTP bearer token.
pub const ENV_HTTP_TOKEN: &str = "P1GW_HTTP_TOKEN";

/// A secret value; `Debug` and `Display` print `***`. Use [`Secret::expose`] only where the
/// value is handed to the server it is for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself: for the server it is for, never for a log or a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file named by a `*_file` key; read by [`SecretSource::read`].
    File(PathBuf),
    /// An environment variable, read when the configuration was loaded.
    Env {
        /// The variable's name, e.g. `P1GW_MQTT_PASSWORD`.
        var: &'static str,
        /// Its value.
        value: Secret,
    },
}

impl SecretSource {
    /// The secret from `var` if it was set, else from `file` if one is named.
    pub fn pick(
        var: &'static str,
        env: Option<&Secret>,
        file: Option<&Path>,
    ) -> Option<SecretSource> {
        match (env, file) {
            (Some(value), _) => Some(SecretSource::Env {
                var,
                value: value.clone(),
            }),
            (None, Some(file)) => Some(SecretSource::File(file.to_owned())),
            (None, None) => None,
        }
    }

    /// The secret: the variable's value, or the file's content without its trailing line end.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not UTF-8, or holds nothing but a line end
    /// (`InvalidData`). The error names the file, never its content.
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            SecretSource::Env { value, .. } => Ok(value.clone()),
            SecretSource::File(path) => {
                let mut text = std::fs::read_to_string(path)?;
                let len = text.trim_end_matches(['\r', '\n']).len();
                text.truncate(len);
                if text.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the file is empty",
                    ));
                }
                Ok(Secret(text))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    /// Where the secret comes from (`file /etc/p1gw/mqtt.pass`, `environment variable
    /// P1GW_MQTT_PASSWORD`), never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env { var, .. } => write!(f, "environment variable {var}"),
        }
    }
}

/// The secrets and defaults taken from the environment when a configuration is loaded. Read
/// through a closure (see `load_with_env`), so tests never set process variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvInputs {
    /// The secret variables that are set: `P1GW_HTTP_TOKEN` and each sink kind's.
    secrets: BTreeMap<&'static str, Secret>,
    /// The spool directory to use when `[spool] dir` is not set.
    pub default_spool_dir: PathBuf,
}

impl EnvInputs {
    /// Reads what the configuration takes from the environment through `env`. Variables that
    /// are set but empty count as unset.
    pub fn read(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| env(name).filter(|value| !value.is_empty());
        let secrets = std::iter::once(ENV_HTTP_TOKEN)
            .chain(super::sink::secret_vars())
            .filter_map(|var| Some((var, Secret::new(get(var)?))))
            .collect();
        EnvInputs {
            secrets,
            default_spool_dir: default_spool_dir(&get),
        }
    }

    /// The secret in variable `var`, if it was set.
    pub fn secret(&self, var: &str) -> Option<&Secret> {
        self.secrets.get(var)
    }
}

/// The spool directory when the configuration names none, somewhere a user can write without
/// setup: systemd's `$STATE_DIRECTORY` (`StateDirectory=p1gw` in the unit), else
/// `$XDG_STATE_HOME/p1gw`, else `$HOME/.local/state/p1gw`, else `./p1gw-state`.
fn default_spool_dir(get: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dirs) = get("STATE_DIRECTORY") {
        // systemd lists one directory per StateDirectory= entry, separated by ':'.
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    if let Some(state) = get("XDG_STATE_HOME") {
        return Path::new(&state).join("p1gw");
    }
    if let Some(home) = get("HOME") {
        return Path::new(&home).join(".local/state/p1gw");
    }
    PathBuf::from("p1gw-state")
}
