//! Pure parts: SAS tokens against independently computed vectors, connection strings, topics
//! and property bags, batch splitting, metering, the budget, and the fake hub's CONNECT checks.
//! `hub.rs`: the sink against the fake hub.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use crate::budget::{Budget, Crossed};
use crate::config::Device;
use crate::encode::{Topic, batch, fills_a_message, metered};
use crate::fake_hub::{FakeDevice, HubConfig, check_connect};
use crate::{AzureSettings, BuildError, ConnectionString, ConnectionStringError, sas};

mod hub;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Vectors computed with Python's `hmac` + `urllib.parse.quote(s, safe='')` (the first also
/// with `openssl dgst -sha256 -mac HMAC`), not with this crate:
///
/// ```text
/// sr = quote(uri, safe=''); sig = b64encode(hmac.new(b64decode(key), f"{sr}\n{se}", sha256))
/// token = f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}"
/// ```
#[test]
fn sas_tokens_match_independently_computed_vectors() {
    let vectors = [
        (
            "myhub.azure-devices.net/devices/meter-1",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            1_735_689_600,
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fmeter-1&sig=U06TlR050Ji8ITEy59IpmxDqLJ9aBbf7jZNJO9W5oVE%3D&se=1735689600",
        ),
        (
            "myhub.azure-devices.net/devices/meter-1/modules/p1gw",
            "c2VjcmV0LWtleS1mb3ItcDFndy10ZXN0cy0xMjM0NTY3OA==",
            1_767_225_600,
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fmeter-1%2Fmodules%2Fp1gw&sig=KYL0EIgefXkOQOVdVuygBcEfyDmKq3p3NiVSKYZTxYA%3D&se=1767225600",
        ),
        (
            "Home-Hub.azure-devices.net/devices/gw:1 (attic)",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            4_102_444_800,
            "SharedAccessSignature sr=Home-Hub.azure-devices.net%2Fdevices%2Fgw%3A1%20%28attic%29&sig=%2FAD4zSZ9KzXgxRfuSSvmN3pujrhv6d0qvAxvtbSJoCk%3D&se=4102444800",
        ),
        (
            "h.azure-devices.net/devices/d+x@y",
            "/////w==",
            1,
            "SharedAccessSignature sr=h.azure-devices.net%2Fdevices%2Fd%2Bx%40y&sig=c3Rgqn6QE9BmuALBKGKPB5670TH7lwK69S2C5vBbfgM%3D&se=1",
        ),
    ];
    for (uri, key, expiry, expected) in vectors {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("key");
        assert_eq!(sas::token(uri, &key, expiry), expected, "{uri}");
    }
}

/// The vectors published with the issue (computed independently with Python's hmac too).
#[test]
fn sas_matches_the_published_vectors() {
    let password = base64::engine::general_purpose::STANDARD
        .decode("cGFzc3dvcmQ=")
        .expect("key");
    assert_eq!(
        sas::sign(&password, "string-to-sign"),
        "o1n1hiIVgzVA2+krq9ty1Z4xsIJKJZP3dYT8MOi65Y4="
    );
    assert_eq!(
        sas::token("uri", &password, 12345),
        "SharedAccessSignature sr=uri&sig=kcWxXAK2OAaAoq2oCkaGzX2NMqDB8nCyNuq2fPYCDhk%3D&se=12345"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode("q+DKVojmMz014RjAwpNGZbAkdOocSVWMKPOccLfUmLE=")
        .expect("key");
    assert_eq!(
        sas::token(
            "myhub.azure-devices.net/devices/device1",
            &key,
            1_700_000_000
        ),
        "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1&sig=AH5i2I4iA8dOMMPOjaZFJ9AjyHqSwKqvaLIVndd1qx4%3D&se=1700000000"
    );
}

#[test]
fn url_encoding_keeps_only_unreserved_characters() {
    assert_eq!(sas::url_encode("aZ09-._~"), "aZ09-._~");
    assert_eq!(sas::url_encode("a/b c+d=e&f"), "a%2Fb%20c%2Bd%3De%26f");
    assert_eq!(sas::url_encode("Þórsmörk"), "%C3%9E%C3%B3rsm%C3%B6rk");
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn connection_strings_parse_with_module_gateway_and_x509() {
    let key = b64(KEY);
    let c = ConnectionString::parse(&format!(
        " HostName=hub.azure-devices.net;DeviceId=meter-1;SharedAccessKey={key}; "
    ))
    .expect("device");
    assert_eq!(c.host_name, "hub.azure-devices.net");
    assert_eq!(c.client_id(), "meter-1");
    assert_eq!(c.resource_uri(), "hub.azure-devices.net/devices/meter-1");
    assert_eq!(c.shared_access_key.as_deref(), Some(KEY));
    assert_eq!(c.connect_host(), "hub.azure-devices.net");

    let m = ConnectionString::parse(&format!(
        "HostName=hub.azure-devices.net;DeviceId=meter-1;ModuleId=p1gw;SharedAccessKey={key};GatewayHostName=edge.local"
    ))
    .expect("module");
    assert_eq!(m.client_id(), "meter-1/p1gw");
    assert_eq!(
        m.resource_uri(),
        "hub.azure-devices.net/devices/meter-1/modules/p1gw"
    );
    assert_eq!(m.connect_host(), "edge.local");
    let device = Device::resolve(m, None).expect("sas");
    assert_eq!(
        device.username(),
        "hub.azure-devices.net/meter-1/p1gw/?api-version=2021-04-12"
    );
    assert_eq!(
        device.events_topic(),
        "devices/meter-1/modules/p1gw/messages/events/"
    );

    let x = ConnectionString::parse("HostName=h;DeviceId=d;x509=true").expect("x509");
    assert!(x.x509 && x.shared_access_key.is_none());
    let printed = format!("{c:?}");
    assert!(
        printed.contains("***") && !printed.contains(&key),
        "{printed}"
    );
}

#[test]
fn connection_string_errors_name_the_field_never_the_key() {
    let secret = "bm90LWJhc2U2NC*!!!";
    let cases: &[(&str, ConnectionStringError)] = &[
        (
            "HostName=h;SharedAccessKey=a2V5",
            ConnectionStringError::Missing("DeviceId"),
        ),
        (
            "DeviceId=d;SharedAccessKey=a2V5",
            ConnectionStringError::Missing("HostName"),
        ),
        (
            &format!("HostName=h;DeviceId=d;SharedAccessKey={secret}")[..],
            ConnectionStringError::BadKey,
        ),
        (
            "HostName=h;DeviceId=d;DeviceId=e",
            ConnectionStringError::Duplicate("DeviceId".to_owned()),
        ),
        (
            "HostName=h;DeviceId=d;Colour=blue",
            ConnectionStringError::Unknown("Colour".to_owned()),
        ),
        (
            "HostName=h;DeviceId=",
            ConnectionStringError::Empty("DeviceId".to_owned()),
        ),
        ("HostName=h;DeviceId", ConnectionStringError::NotKeyValue(2)),
        (
            "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
            ConnectionStringError::PolicyString,
        ),
        (
            "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=x",
            ConnectionStringError::FixedToken,
        ),
        (
            "HostName=h;DeviceId=a/b;SharedAccessKey=a2V5",
            ConnectionStringError::BadId("DeviceId"),
        ),
        (
            "HostName=h;DeviceId=d;x509=yes",
            ConnectionStringError::BadX509,
        ),
    ];
    for (text, expected) in cases {
        let err = ConnectionString::parse(text).expect_err(text);
        assert_eq!(&err, expected, "{text}");
        let message = BuildError::from(err).to_string();
        assert!(message.starts_with("connection string: "), "{message}");
        assert!(
            !message.contains(secret) && !message.contains("a2V5"),
            "{message}"
        );
    }
    let e = ConnectionStringError::Missing("DeviceId").to_string();
    assert!(e.starts_with("missing DeviceId;"), "{e}");
    assert_eq!(
        ConnectionStringError::BadKey.to_string(),
        "SharedAccessKey is not valid base64"
    );
}

#[test]
fn key_and_certificate_must_fit_together() {
    let id = crate::ClientIdentity {
        cert_pem: b"cert".to_vec(),
        key_pem: b"key".to_vec(),
    };
    let with_key = ConnectionString::parse(&format!(
        "HostName=h;DeviceId=d;SharedAccessKey={}",
        b64(KEY)
    ))
    .expect("parse");
    let x509 = ConnectionString::parse("HostName=h;DeviceId=d;x509=true").expect("parse");
    let bare = ConnectionString::parse("HostName=h;DeviceId=d").expect("parse");
    assert!(Device::resolve(with_key.clone(), None).is_ok());
    assert!(Device::resolve(x509.clone(), Some(&id)).is_ok());
    assert!(
        Device::resolve(bare.clone(), Some(&id)).is_ok(),
        "certificate files alone"
    );
    for (conn, client, says) in [
        (with_key, Some(&id), "use one"),
        (x509, None, "x509=true needs a client certificate"),
        (bare, None, "no SharedAccessKey"),
    ] {
        let e = Device::resolve(conn, client).expect_err(says).to_string();
        assert!(e.contains(says), "{e}");
    }
    // Through build, settings are checked too.
    let mut s = AzureSettings::new("HostName=h;DeviceId=d");
    s.ca_pem = Some(b"x".to_vec());
    assert!(matches!(crate::build(s), Err(BuildError::Auth(_))));
    let mut s = AzureSettings::new(format!(
        "HostName=h;DeviceId=d;SharedAccessKey={}",
        b64(KEY)
    ));
    s.properties = vec![("$.ct".to_owned(), "x".to_owned())];
    assert!(crate::build(s).is_err_and(|e| e.to_string().contains("system properties")));
    let s = AzureSettings::new("HostName=h;DeviceId=d;SharedAccessKey=secret!!");
    let printed = format!("{s:?}");
    assert!(!printed.contains("secret!!"), "{printed}");
}

#[test]
fn the_topic_carries_content_type_encoding_and_url_encoded_properties() {
    let t = Topic::new(
        "devices/meter-1/messages/events/",
        &[
            ("meter".to_owned(), "home".to_owned()),
            ("kind".to_owned(), "electricity".to_owned()),
            ("site name".to_owned(), "Þórsgata 1&2".to_owned()),
        ],
    );
    assert_eq!(
        t.topic,
        "devices/meter-1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&meter=home&kind=electricity&site%20name=%C3%9E%C3%B3rsgata%201%262"
    );
    // application/json + utf-8 + meter home + kind electricity + site name + value.
    assert_eq!(
        t.property_bytes,
        16 + 5 + 5 + 4 + 4 + 11 + 9 + "Þórsgata 1&2".len()
    );
}

fn records(sizes: &[usize]) -> Vec<(u64, Vec<u8>)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64 + 10, vec![b'x'; *n]))
        .collect()
}

fn slices(r: &[(u64, Vec<u8>)]) -> impl Iterator<Item = (u64, &[u8])> {
    r.iter().map(|(s, v)| (*s, v.as_slice()))
}

#[test]
fn batches_split_in_order_under_the_limit() {
    // Framing: {"readings":[ ]} is 15 bytes, plus one comma between readings.
    let r = records(&[40, 40, 40, 40]);
    let b = batch(slices(&r), 15 + 40 + 1 + 40);
    assert_eq!(b.too_large, None);
    let spans: Vec<(u64, u64, usize)> = b
        .messages
        .iter()
        .map(|m| (m.first, m.last, m.readings))
        .collect();
    assert_eq!(spans, [(10, 11, 2), (12, 13, 2)]);
    for m in &b.messages {
        assert!(m.body.len() <= 96, "{}", m.body.len());
        assert!(m.body.starts_with(b"{\"readings\":[") && m.body.ends_with(b"]}"));
    }
    // One byte less: one reading per message.
    assert_eq!(batch(slices(&r), 95).messages.len(), 4);
    // A reading that alone is over the limit stops the batch there.
    let r = records(&[10, 10, 500, 10]);
    let b = batch(slices(&r), 100);
    assert_eq!(b.messages.len(), 1);
    assert_eq!((b.messages[0].first, b.messages[0].last), (10, 11));
    assert_eq!(b.too_large, Some(12));
    assert!(fills_a_message(&records(&[50, 50]), 100));
    assert!(!fills_a_message(&records(&[40, 40]), 100));
    // Real JSON stays JSON.
    let r = vec![(1, b"{\"a\":1}".to_vec()), (2, b"{\"a\":2}".to_vec())];
    let b = batch(slices(&r), 1000);
    assert_eq!(b.messages[0].body, b"{\"readings\":[{\"a\":1},{\"a\":2}]}");
}

#[test]
fn messages_are_metered_per_started_chunk() {
    assert_eq!(metered(0, 512), 1);
    assert_eq!(metered(512, 512), 1);
    assert_eq!(metered(513, 512), 2);
    assert_eq!(metered(1600, 512), 4);
    assert_eq!(metered(4096, 4096), 1);
    assert_eq!(metered(6 * 1024, 4096), 2);
    assert_eq!(metered(256 * 1024, 512), 512);
}

#[test]
fn the_budget_warns_at_80_and_100_percent_once_and_resets_each_utc_day() {
    let noon = 20_000 * 86_400 + 12 * 3600;
    let mut b = Budget::new(10);
    assert_eq!(b.remaining(noon), 10);
    assert_eq!(b.spend(noon, 7), None);
    assert_eq!(b.spend(noon, 1), Some(Crossed::Most));
    assert_eq!(b.spend(noon, 1), None, "80 % is reported once");
    assert_eq!(b.spend(noon, 1), Some(Crossed::All));
    assert_eq!(b.remaining(noon), 0);
    assert_eq!(b.exhausted(noon), None, "100 % was reported already");
    assert_eq!(Budget::until_tomorrow(noon), 12 * 3600);
    // One second before midnight: still today; at midnight: a new day.
    assert_eq!(b.remaining(noon + 12 * 3600 - 1), 0);
    assert_eq!(b.remaining(noon + 12 * 3600), 10);
    assert_eq!(b.used(noon + 12 * 3600), 0);
    assert_eq!(b.exhausted(noon + 12 * 3600), Some(Crossed::All));
    assert_eq!(
        b.spend(noon + 12 * 3600, 12),
        None,
        "already reported today"
    );
}

#[test]
fn the_fake_hub_checks_device_user_name_and_token() {
    let config = HubConfig::new(vec![FakeDevice::sas("meter-1", KEY)]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let user = "fake-hub.azure-devices.net/meter-1/?api-version=2021-04-12";
    let resource = "fake-hub.azure-devices.net/devices/meter-1";
    let good = sas::token(resource, KEY, 1_800_000_060);
    let issued = HashMap::new();
    let check = |client: &str, user: &str, password: &str| {
        check_connect(&config, client, user, password, None, &issued, now).map(|(_, se)| se)
    };
    assert_eq!(check("meter-1", user, &good), Ok(Some(1_800_000_060)));
    let refused = [
        ("other", user.to_owned(), good.clone(), "unknown device"),
        (
            "meter-1",
            user.replace("2021-04-12", "2018-06-30"),
            good.clone(),
            "api-version",
        ),
        (
            "meter-1",
            "meter-1".to_owned(),
            good.clone(),
            "is not fake-hub",
        ),
        (
            "meter-1",
            user.to_owned(),
            sas::token(resource, b"wrong key", 1_800_000_060),
            "signature",
        ),
        (
            "meter-1",
            user.to_owned(),
            sas::token(resource, KEY, 1_800_000_000),
            "expired",
        ),
        (
            "meter-1",
            user.to_owned(),
            sas::token(
                "fake-hub.azure-devices.net/devices/meter-2",
                KEY,
                1_800_000_060,
            ),
            "sr",
        ),
        ("meter-1", user.to_owned(), String::new(), "no password"),
    ];
    for (client, user, password, says) in refused {
        let e = check(client, &user, &password).expect_err(says);
        assert!(e.contains(says), "{says}: {e}");
    }
}
