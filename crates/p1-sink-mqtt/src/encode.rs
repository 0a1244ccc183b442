//! Reading → spool record: which topics a reading is published on, the per-topic rate limit and
//! "only on change", and the record format. [`Publisher::messages`] is pure: no I/O, no clock
//! (the readings' own receive times drive the rate limit, so tests need no timers). In the
//! sink, the record holds only the state message (the history); value messages go to the
//! latest-value store ([`crate::latest`]), the present, which the connection task publishes
//! ahead of any backlog.
//!
//! # Topics (relative to `topic_prefix`)
//!
//! | topic | payload |
//! |---|---|
//! | `<meter>/state` | [`p1_core::Reading::json`], the whole reading |
//! | `<meter>/<name>` | one value of the meter, e.g. `home/energy_import_total` → `1988.284` |
//! | `<meter>/<kind>_<channel>/<name>` | one value of an M-Bus submeter, e.g. `home/gas_1/gas_volume`, `home/hot_water_1/hot_water_volume` |
//!
//! Every numeric line gets a value topic, under its name (docs/obis.md, or the user's from
//! `[meter.codes]`) or, for a code nobody named, `obis_A_B_C_D_E` (no Home Assistant entity
//! for those); lines the user set `publish = false` get none. Unnamed text is in the state
//! message only. Numbers are in the canonical unit (W → kW, Wh → kWh, …; Veitur's heat "Wh" as
//! sent) or the user's unit and scale, written as the shortest decimal that reads back as the same `f64`; text as text;
//! `meter_time` as RFC 3339 UTC. `<kind>` is `gas`, `water`, `heat`, `hot_water`, `cooling` or
//! `unknown` (docs/markets.md §b: by device type, else by unit); two submeters of one kind differ by
//! channel.
//!
//! # Record format
//!
//! A record holds every message of one reading, so that the reading leaves the spool only when
//! the broker acknowledged all of them: a version byte (1), the number of messages (u32
//! big-endian), then per message a flags byte (bit 0:
//! retain), the topic (u16 big-endian length + UTF-8, relative to the prefix) and the payload
//! (u32 big-endian length + bytes).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use p1_core::{Encode, MeasuredValue, Reading};

use crate::discovery::Discovery;
use crate::latest::Latest;

const VERSION: u8 = 1;

/// One MQTT message of a record; the topic is relative to the topic prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic below `<topic_prefix>/`.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Publish retained.
    pub retain: bool,
}

/// Encodes the messages of one reading as a spool record.
pub fn encode_record(messages: &[Message]) -> Vec<u8> {
    let size: usize = messages
        .iter()
        .map(|m| 7 + m.topic.len() + m.payload.len())
        .sum();
    let mut out = Vec::with_capacity(5 + size);
    out.push(VERSION);
    out.extend_from_slice(&(messages.len() as u32).to_be_bytes());
    for m in messages {
        out.push(u8::from(m.retain));
        // Topics are built from names of at most 64 characters and canonical names; payloads
        // are readings of a few KiB. Longer ones are cut at the limit rather than corrupting
        // the framing (and then show up as a wrong topic, not a crash).
        let topic = &m.topic.as_bytes()[..m.topic.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic);
        let payload = &m.payload[..m.payload.len().min(u32::MAX as usize)];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// Decodes a record made by [`encode_record`].
///
/// # Errors
/// A message saying what is wrong, for a record that is not one (an unknown version, a
/// truncated field, a topic that is not UTF-8).
pub fn decode_record(mut bytes: &[u8]) -> Result<Vec<Message>, String> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err("empty record".to_owned());
    };
    if version != VERSION {
        return Err(format!("unknown record version {version}"));
    }
    bytes = rest;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        if bytes.len() < n {
            return Err(format!("record truncated in {what}"));
        }
        let (head, tail) = bytes.split_at(n);
        bytes = tail;
        Ok(head)
    };
    let count = take(4, "message count")?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
    let mut out = Vec::new();
    for _ in 0..count {
        let flags = take(1, "flags")?;
        let retain = flags[0] & 1 == 1;
        let len = take(2, "topic length")?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let topic = std::str::from_utf8(take(len, "topic")?)
            .map_err(|_| "topic is not UTF-8".to_owned())?
            .to_owned();
        let len = take(4, "payload length")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let payload = take(len, "payload")?.to_vec();
        out.push(Message {
            topic,
            payload,
            retain,
        });
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes after the last message", bytes.len()));
    }
    Ok(out)
}

/// One value of a reading that gets its own topic (and a Home Assistant entity).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueItem {
    /// Topic below `<topic_prefix>/<meter>/`: `<name>` or `<kind>_<channel>/<name>`.
    pub path: String,
    /// The submeter, for values of one: its kind and channel.
    pub submeter: Option<(&'static str, u8)>,
    /// The name ([`p1_core::Measurement::label`]): canonical, the user's, or for a code nobody
    /// named `obis_A_B_C_D_E`.
    pub name: Cow<'static, str>,
    /// Whether a table names the line (the parser's or the user's); a line nobody named gets
    /// a value topic but no Home Assistant entity.
    pub named: bool,
    /// The payload.
    pub payload: String,
    /// The unit as sent (before conversion to the canonical unit).
    pub unit: Option<String>,
    /// Whether the value is a number.
    pub numeric: bool,
    /// The unit of the payload (after conversion), as [`p1_core::Measurement::unit_label`].
    pub display_unit: Option<String>,
    /// The rule of the meter's code table for the line, if one applies.
    pub rule: Option<Arc<p1_core::CodeRule>>,
}

/// The values of `reading` that get a topic, in telegram order, each path once (the first
/// line wins), and `meter_time` from the reading's clock.
pub fn values(reading: &Reading) -> Vec<ValueItem> {
    let mut out: Vec<ValueItem> = Vec::new();
    for m in reading.objects.iter().filter(|m| m.published()) {
        let Some(name) = m.label() else { continue };
        if name == "meter_time" {
            continue;
        }
        if m.name.is_none() && !matches!(m.value, MeasuredValue::Number(_)) {
            continue; // an unnamed text, time or log: the state message has it
        }
        let (payload, numeric) = match &m.value {
            MeasuredValue::Number(d) => (format_number(m.number().unwrap_or(d.to_f64())), true),
            MeasuredValue::Text(t) => (t.clone(), false),
            MeasuredValue::Time(t) => (t.to_string(), false),
            MeasuredValue::None => continue,
        };
        let submeter = m
            .channel
            .map(|c| (m.kind.map_or("unknown", |k| k.as_str()), c));
        let path = match submeter {
            Some((kind, channel)) => format!("{kind}_{channel}/{name}"),
            None => name.clone().into_owned(),
        };
        if out.iter().any(|v| v.path == path) {
            continue;
        }
        out.push(ValueItem {
            path,
            submeter,
            named: m.name.is_some(),
            name,
            payload,
            unit: m.unit.clone(),
            numeric,
            display_unit: m.unit_label().map(|u| u.into_owned()),
            rule: m.rule.clone(),
        });
    }
    if let Some(t) = reading.meter_time {
        out.push(ValueItem {
            path: "meter_time".to_owned(),
            submeter: None,
            name: Cow::Borrowed("meter_time"),
            named: true,
            payload: t.to_string(),
            unit: None,
            numeric: false,
            display_unit: None,
            rule: None,
        });
    }
    out
}

/// The shortest decimal that reads back as `v` (`1988.284`, `2`, `-0.5`).
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        // No "-0".
        return "0".to_owned();
    }
    format!("{v}")
}

/// Per-topic memory for the rate limit and "only on change".
#[derive(Debug, Clone)]
struct TopicState {
    /// Receive time (ms since the epoch) of the last reading published on the topic.
    at_ms: i64,
    /// Its payload (value topics only).
    payload: String,
}

/// The sink's [`Encode`]: decides per reading which messages to publish and feeds the Home
/// Assistant discovery model.
pub struct Publisher {
    settings: Arc<crate::MqttSettings>,
    topics: HashMap<String, TopicState>,
    discovery: Option<Discovery>,
    /// Where value messages go instead of the spool record (the present is not history).
    latest: Option<Arc<Latest>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topics", &self.topics.len())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for `settings`; `discovery` receives every reading (also rate-limited ones).
    pub fn new(settings: Arc<crate::MqttSettings>, discovery: Option<Discovery>) -> Self {
        Publisher {
            settings,
            topics: HashMap::new(),
            discovery,
            latest: None,
        }
    }

    /// Value messages go to `latest`, which the connection task publishes as the present;
    /// the spool record then holds only the state message (the history).
    pub(crate) fn with_latest(mut self, latest: Arc<Latest>) -> Self {
        self.latest = Some(latest);
        self
    }

    /// The messages for `reading`; empty when the rate limit and "only on change" leave none.
    pub fn messages(&mut self, reading: &Reading) -> Vec<Message> {
        let items = values(reading);
        if let Some(discovery) = &mut self.discovery {
            discovery.observe(reading, &items);
        }
        let now = reading.received_at.as_millisecond();
        let min_ms = i64::try_from(self.settings.min_interval.as_millis()).unwrap_or(i64::MAX);
        let retain = self.settings.retain;
        let meter = &*reading.meter;
        let mut out = Vec::new();
        let state_topic = format!("{meter}/state");
        if self.due(&state_topic, now, min_ms, None) {
            out.push(Message {
                topic: state_topic,
                payload: reading.json().as_bytes().to_vec(),
                retain,
            });
        }
        if self.settings.value_topics {
            let only_on_change = self.settings.only_on_change;
            for item in items {
                let topic = format!("{meter}/{}", item.path);
                let changed_only = only_on_change.then_some(item.payload.as_str());
                if self.due(&topic, now, min_ms, changed_only) {
                    out.push(Message {
                        topic,
                        payload: item.payload.into_bytes(),
                        retain,
                    });
                }
            }
        }
        out
    }

    /// Whether `topic` may be published now; if so, remembers it. `changed_only`: the payload,
    /// when only a changed one may be published.
    fn due(&mut self, topic: &str, now_ms: i64, min_ms: i64, changed_only: Option<&str>) -> bool {
        if let Some(last) = self.topics.get(topic) {
            if changed_only.is_some_and(|p| p == last.payload) {
                return false;
            }
            // A clock that went back (a replay restarting) never blocks a topic for long.
            let elapsed = now_ms.saturating_sub(last.at_ms);
            if min_ms > 0 && (0..min_ms).contains(&elapsed) {
                return false;
            }
        }
        self.topics.insert(
            topic.to_owned(),
            TopicState {
                at_ms: now_ms,
                payload: changed_only.unwrap_or_default().to_owned(),
            },
        );
        true
    }
}

impl Encode for Publisher {
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        let mut messages = self.messages(reading);
        if let Some(latest) = &self.latest {
            // The receive clock, not the meter's: a meter is silent when nothing arrives.
            latest.seen(&reading.meter, tokio::time::Instant::now());
            let state = format!("{}/state", reading.meter);
            messages.retain(|m| {
                if m.topic == state {
                    return true;
                }
                latest.set(m.topic.clone(), m.payload.clone(), m.retain);
                false
            });
        }
        (!messages.is_empty()).then(|| encode_record(&messages))
    }
}
