//! Pure message building: the topic with its property bag, batch bodies under the size limit,
//! and how IoT Hub meters a message.
//!
//! # Body
//!
//! One message carries one or more readings, oldest first, as a JSON object:
//!
//! ```json
//! {"readings":[{…reading…},{…reading…}]}
//! ```
//!
//! Each reading is [`p1_core::Reading::json`] (docs/contracts.md §4 plus `meter`, `meter_id`,
//! `received_at`), exactly as spooled. An object rather than a bare array, so that routing
//! queries can test `is_defined($body.readings)` and fields can be added later.
//!
//! # Size
//!
//! IoT Hub counts a message's size as its body plus the names and values of its application
//! properties plus the values of its system properties (`$.ct`, `$.ce`); a message over
//! 256 KiB is refused. Batches are split so that each message stays under the configured
//! limit. The same size is what the hub meters: one message per started chunk (512 bytes on the
//! free tier, 4 KiB on paid tiers).

use crate::sas::url_encode;

/// The system properties every message carries: JSON in UTF-8, so routing can query the body.
const SYSTEM_PROPERTIES: &str = "$.ct=application%2Fjson&$.ce=utf-8";
/// Their values as the hub counts them: `application/json` and `utf-8`.
const SYSTEM_PROPERTY_BYTES: usize = "application/json".len() + "utf-8".len();
const OPEN: &[u8] = b"{\"readings\":[";
const CLOSE: &[u8] = b"]}";

/// The topic of every device-to-cloud message: the events topic plus the property bag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// `devices/{device}/messages/events/$.ct=…&$.ce=utf-8[&name=value…]`.
    pub topic: String,
    /// What the properties add to a message's size.
    pub property_bytes: usize,
}

impl Topic {
    /// `events` (`devices/{device}/messages/events/`) with the system properties and the
    /// URL-encoded application `properties`.
    pub fn new(events: &str, properties: &[(String, String)]) -> Topic {
        let mut topic = format!("{events}{SYSTEM_PROPERTIES}");
        let mut property_bytes = SYSTEM_PROPERTY_BYTES;
        for (name, value) in properties {
            topic.push('&');
            topic.push_str(&url_encode(name));
            topic.push('=');
            topic.push_str(&url_encode(value));
            property_bytes += name.len() + value.len();
        }
        Topic {
            topic,
            property_bytes,
        }
    }
}

/// One message to send: the readings of spool records `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The first record's spool sequence number.
    pub first: u64,
    /// The last record's.
    pub last: u64,
    /// How many readings.
    pub readings: usize,
    /// `{"readings":[…]}`.
    pub body: Vec<u8>,
}

/// What [`batch`] made of the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Messages, in order, each under the limit.
    pub messages: Vec<Message>,
    /// The record that stopped the batch because it alone exceeds the limit, if any (nothing
    /// after it was batched).
    pub too_large: Option<u64>,
}

/// The body size of `n` readings of `bytes` bytes in all.
fn body_len(n: usize, bytes: usize) -> usize {
    OPEN.len() + CLOSE.len() + bytes + n.saturating_sub(1)
}

/// Splits `records` (`(seq, reading JSON)`, oldest first) into messages whose body is at most
/// `max_body` bytes.
pub fn batch<'r>(records: impl IntoIterator<Item = (u64, &'r [u8])>, max_body: usize) -> Batch {
    let mut messages = Vec::new();
    let mut current: Option<Message> = None;
    for (seq, record) in records {
        if body_len(1, record.len()) > max_body {
            messages.extend(current.take().map(close));
            return Batch {
                messages,
                too_large: Some(seq),
            };
        }
        if let Some(m) = &mut current
            && m.body.len() + 1 + record.len() + CLOSE.len() > max_body
        {
            messages.extend(current.take().map(close));
        }
        match &mut current {
            Some(m) => {
                m.body.push(b',');
                m.body.extend_from_slice(record);
                m.last = seq;
                m.readings += 1;
            }
            None => {
                let mut body = Vec::with_capacity(max_body.min(64 * 1024));
                body.extend_from_slice(OPEN);
                body.extend_from_slice(record);
                current = Some(Message {
                    first: seq,
                    last: seq,
                    readings: 1,
                    body,
                });
            }
        }
    }
    messages.extend(current.map(close));
    Batch {
        messages,
        too_large: None,
    }
}

fn close(mut m: Message) -> Message {
    m.body.extend_from_slice(CLOSE);
    m
}

/// Whether `records` hold more than one message's worth (a backlog: send without waiting for
/// the interval).
pub fn fills_a_message(records: &[(u64, Vec<u8>)], max_body: usize) -> bool {
    let bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
    body_len(records.len(), bytes) > max_body
}

/// How many messages the hub meters for a message of `size` bytes in `chunk`-byte chunks:
/// one per started chunk, at least one.
pub fn metered(size: usize, chunk: u32) -> u32 {
    let chunk = usize::try_from(chunk.max(1)).unwrap_or(usize::MAX);
    u32::try_from(size.div_ceil(chunk).max(1)).unwrap_or(u32::MAX)
}
