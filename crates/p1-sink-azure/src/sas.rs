//! IoT Hub shared access signature (SAS) tokens.
//!
//! ```text
//! SharedAccessSignature sr={URL-encoded resource URI}&sig={URL-encoded signature}&se={expiry}
//! signature = base64(HMAC-SHA256(key = base64-decoded SharedAccessKey,
//!                                message = URL-encoded resource URI + "\n" + expiry))
//! ```
//!
//! `expiry` is in seconds since the Unix epoch. URL encoding keeps only RFC 3986's unreserved
//! characters (`A–Z a–z 0–9 - . _ ~`) and writes upper-case hex, like the Azure SDKs
//! (`urllib.parse.quote(s, safe='')`, `encodeURIComponent`).

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// Everything but RFC 3986's unreserved characters is encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// URL-encodes `text` as SAS tokens and MQTT property bags need it.
pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, ENCODE).to_string()
}

/// The base64 HMAC-SHA256 of `message` under `key`.
pub fn sign(key: &[u8], message: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The SAS token for `resource_uri` (`{host}/devices/{device}[/modules/{module}]`), signed
/// with the decoded `key`, valid until `expiry` (Unix seconds).
pub fn token(resource_uri: &str, key: &[u8], expiry: u64) -> String {
    let sr = url_encode(resource_uri);
    let sig = sign(key, &format!("{sr}\n{expiry}"));
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}",
        url_encode(&sig)
    )
}
