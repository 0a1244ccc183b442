//! The device connection string: `HostName=…;DeviceId=…;SharedAccessKey=…`.

use std::fmt;

use base64::Engine as _;

/// A parsed device (or module) connection string. `Debug` prints the key as `***`.
///
/// Accepted keys (case-sensitive, as the Azure portal writes them), separated by `;`:
///
/// | key | |
/// |---|---|
/// | `HostName` | required: the hub, `<name>.azure-devices.net` |
/// | `DeviceId` | required |
/// | `ModuleId` | optional: send as this module of the device |
/// | `SharedAccessKey` | the device's (or module's) base64 key, for SAS tokens |
/// | `x509=true` | authenticate with a client certificate instead of a key |
/// | `GatewayHostName` | optional: connect through this IoT Edge gateway (tokens still name `HostName`) |
///
/// A hub-level string (`SharedAccessKeyName`) and a fixed token (`SharedAccessSignature`) are
/// refused with a message saying what to use instead.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `HostName`.
    pub host_name: String,
    /// `DeviceId`.
    pub device_id: String,
    /// `ModuleId`.
    pub module_id: Option<String>,
    /// `SharedAccessKey`, base64-decoded.
    pub shared_access_key: Option<Vec<u8>>,
    /// `x509=true`.
    pub x509: bool,
    /// `GatewayHostName`.
    pub gateway_host_name: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field(
                "shared_access_key",
                &self.shared_access_key.as_ref().map(|_| "***"),
            )
            .field("x509", &self.x509)
            .field("gateway_host_name", &self.gateway_host_name)
            .finish()
    }
}

/// Why a connection string was refused. Messages name the field, never a value of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A required field is missing.
    #[error(
        "missing {0}; a device connection string looks like HostName=<hub>.azure-devices.net;DeviceId=<device>;SharedAccessKey=<key>"
    )]
    Missing(&'static str),
    /// A field is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// A part is not `key=value`.
    #[error("part {0} is not key=value")]
    NotKeyValue(usize),
    /// A field appears twice.
    #[error("{0} appears twice")]
    Duplicate(String),
    /// A field p1gw does not know.
    #[error(
        "unknown field {0:?} (known: HostName, DeviceId, ModuleId, SharedAccessKey, x509, GatewayHostName)"
    )]
    Unknown(String),
    /// `SharedAccessKey` is not base64.
    #[error("SharedAccessKey is not valid base64")]
    BadKey,
    /// `x509` is neither `true` nor `false`.
    #[error("x509 must be true or false")]
    BadX509,
    /// A hub-level (policy) connection string.
    #[error(
        "SharedAccessKeyName: this is a hub or policy connection string; p1gw needs the device's own connection string (IoT Hub > Devices > <device> > Primary connection string)"
    )]
    PolicyString,
    /// A connection string holding a ready-made token.
    #[error(
        "SharedAccessSignature: a fixed token cannot be renewed; use the device's SharedAccessKey"
    )]
    FixedToken,
    /// `DeviceId` or `ModuleId` with a character MQTT topics cannot carry.
    #[error("{0} contains '/', '#', '+' or a control character, which MQTT topics cannot carry")]
    BadId(&'static str),
}

impl ConnectionString {
    /// Parses a connection string (surrounding white space and empty parts are ignored).
    ///
    /// # Errors
    /// A missing `HostName` or `DeviceId`, an unknown or repeated field, a key that is not
    /// base64, a hub-level or fixed-token string.
    pub fn parse(text: &str) -> Result<ConnectionString, ConnectionStringError> {
        let mut host_name = None;
        let mut device_id = None;
        let mut module_id = None;
        let mut key = None;
        let mut x509 = None;
        let mut gateway = None;
        for (i, part) in text.trim().split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                return Err(ConnectionStringError::NotKeyValue(i + 1));
            };
            let name = name.trim();
            let value = value.trim();
            let slot = match name {
                "HostName" => &mut host_name,
                "DeviceId" => &mut device_id,
                "ModuleId" => &mut module_id,
                "SharedAccessKey" => &mut key,
                "x509" => &mut x509,
                "GatewayHostName" => &mut gateway,
                "SharedAccessKeyName" => return Err(ConnectionStringError::PolicyString),
                "SharedAccessSignature" => return Err(ConnectionStringError::FixedToken),
                other => return Err(ConnectionStringError::Unknown(other.to_owned())),
            };
            if slot.is_some() {
                return Err(ConnectionStringError::Duplicate(name.to_owned()));
            }
            if value.is_empty() {
                return Err(ConnectionStringError::Empty(name.to_owned()));
            }
            *slot = Some(value);
        }
        let host_name = host_name.ok_or(ConnectionStringError::Missing("HostName"))?;
        let device_id = device_id.ok_or(ConnectionStringError::Missing("DeviceId"))?;
        check_id("DeviceId", device_id)?;
        if let Some(module) = module_id {
            check_id("ModuleId", module)?;
        }
        let shared_access_key = key
            .map(|k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k)
                    .map_err(|_| ConnectionStringError::BadKey)
            })
            .transpose()?;
        let x509 = match x509 {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(ConnectionStringError::BadX509),
        };
        Ok(ConnectionString {
            host_name: host_name.to_owned(),
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            shared_access_key,
            x509,
            gateway_host_name: gateway.map(str::to_owned),
        })
    }

    /// The MQTT client id: `{device}` or `{device}/{module}`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{module}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    /// The SAS resource URI: `{host}/devices/{device}` or `{host}/devices/{device}/modules/{module}`.
    pub fn resource_uri(&self) -> String {
        match &self.module_id {
            Some(module) => format!(
                "{}/devices/{}/modules/{module}",
                self.host_name, self.device_id
            ),
            None => format!("{}/devices/{}", self.host_name, self.device_id),
        }
    }

    /// The host to connect to: the gateway when there is one, else the hub.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

/// IDs go into MQTT topics as they are: refuse what a topic cannot carry. (IoT Hub's own rules
/// are stricter; the hub refuses what it does not know anyway.)
fn check_id(field: &'static str, id: &str) -> Result<(), ConnectionStringError> {
    if id
        .chars()
        .any(|c| matches!(c, '/' | '#' | '+') || c.is_control())
    {
        return Err(ConnectionStringError::BadId(field));
    }
    Ok(())
}
