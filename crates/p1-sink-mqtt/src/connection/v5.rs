//! MQTT 5, translated: the connection task reads rumqttc's v5 events as the 3.1.1 events they
//! amount to, except MQTT 5's refusals (see the parent module's "MQTT 5" section), and names
//! the v5 failures for logs and health.

use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, PubRecReason};

use super::*;

pub(super) fn qos5(qos: rumqttc::QoS) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    match qos {
        rumqttc::QoS::AtMostOnce => Q5::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => Q5::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => Q5::ExactlyOnce,
    }
}

impl Run {
    /// An MQTT 5 event, as the 3.1.1 event it amounts to (or a refusal).
    pub(super) fn read_v5(&mut self, event: rumqttc::v5::Event) -> Step {
        use rumqttc::v5::Event as E5;
        match event {
            E5::Outgoing(out) => Step::Event(Event::Outgoing(out)),
            E5::Incoming(Packet5::ConnAck(ack)) => {
                self.max_packet = ack.properties.as_ref().and_then(|p| p.max_packet_size);
                Step::Event(Event::Incoming(Incoming::ConnAck(rumqttc::ConnAck::new(
                    rumqttc::ConnectReturnCode::Success,
                    ack.session_present,
                ))))
            }
            E5::Incoming(Packet5::PubAck(ack)) => match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Step::Event(
                    Event::Incoming(Incoming::PubAck(rumqttc::PubAck::new(ack.pkid))),
                ),
                reason => Step::Refused {
                    pkid: ack.pkid,
                    code: puback_code(reason),
                    name: format!("{reason:?}"),
                    reason_string: ack.properties.and_then(|p| p.reason_string),
                },
            },
            E5::Incoming(Packet5::PubRec(rec)) => match rec.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Step::Ignore,
                reason => Step::Refused {
                    pkid: rec.pkid,
                    code: pubrec_code(reason),
                    name: format!("{reason:?}"),
                    reason_string: rec.properties.and_then(|p| p.reason_string),
                },
            },
            E5::Incoming(Packet5::PubComp(comp)) => Step::Event(Event::Incoming(
                Incoming::PubComp(rumqttc::PubComp::new(comp.pkid)),
            )),
            E5::Incoming(Packet5::Publish(p)) => {
                Step::Event(Event::Incoming(Incoming::Publish(rumqttc::Publish::new(
                    String::from_utf8_lossy(&p.topic),
                    rumqttc::QoS::AtMostOnce,
                    p.payload.to_vec(),
                ))))
            }
            E5::Incoming(_) => Step::Ignore,
        }
    }
}

/// The size of the MQTT 5 PUBLISH packet rumqttc makes of this message (no properties), as
/// the broker's maximum packet size counts it.
pub(crate) fn packet_size_v5(topic: &str, qos: rumqttc::QoS, payload: &[u8]) -> u64 {
    let mut publish =
        rumqttc::v5::mqttbytes::v5::Publish::new(topic, qos5(qos), payload.to_vec(), None);
    if qos != rumqttc::QoS::AtMostOnce {
        publish.pkid = 1;
    }
    u64::try_from(publish.size()).unwrap_or(u64::MAX)
}

fn puback_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

fn pubrec_code(reason: PubRecReason) -> u8 {
    match reason {
        PubRecReason::Success => 0x00,
        PubRecReason::NoMatchingSubscribers => 0x10,
        PubRecReason::UnspecifiedError => 0x80,
        PubRecReason::ImplementationSpecificError => 0x83,
        PubRecReason::NotAuthorized => 0x87,
        PubRecReason::TopicNameInvalid => 0x90,
        PubRecReason::PacketIdentifierInUse => 0x91,
        PubRecReason::QuotaExceeded => 0x97,
        PubRecReason::PayloadFormatInvalid => 0x99,
    }
}

/// [`describe`] for an MQTT 5 connection.
pub(crate) fn describe_v5(e: &rumqttc::v5::ConnectionError, settings: &MqttSettings) -> String {
    use rumqttc::v5::mqttbytes::Error as MqttError;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    use rumqttc::v5::{ConnectionError as C5, StateError as S5};
    let broker = settings.broker();
    match e {
        C5::ConnectionRefused(Code::BadUserNamePassword) => format!(
            "the broker {broker} refused the login: bad user name or password (check {})",
            settings.credentials_hint
        ),
        C5::ConnectionRefused(Code::NotAuthorized) => format!(
            "the broker {broker} refused the connection: not authorized (check {}, and the broker's ACL)",
            settings.credentials_hint
        ),
        C5::ConnectionRefused(Code::ClientIdentifierNotValid) => format!(
            "the broker {broker} refused the client id {:?}",
            settings.client_id
        ),
        C5::ConnectionRefused(Code::UnsupportedProtocolVersion) => {
            format!("the broker {broker} does not speak MQTT 5 (set protocol = \"3.1.1\")")
        }
        C5::ConnectionRefused(code) => {
            format!("the broker {broker} refused the connection: {code:?}")
        }
        C5::Io(io) => format!("cannot reach the broker {broker}: {io}"),
        C5::Tls(tls) => format!("TLS with the broker {broker} failed: {tls}"),
        C5::MqttState(S5::AwaitPingResp) => {
            format!("the broker {broker} stopped answering (keep-alive ping not acknowledged)")
        }
        C5::MqttState(S5::Deserialization(MqttError::InvalidConnectReturnCode(0x95))) => format!(
            "the broker {broker} refused a message as too large (PUBACK 0x95, which rumqttc cannot read: reconnecting)"
        ),
        C5::MqttState(S5::ServerDisconnect {
            reason_code,
            reason_string,
        }) => match reason_string {
            Some(r) => format!("the broker {broker} disconnected: {reason_code:?} ({r})"),
            None => format!("the broker {broker} disconnected: {reason_code:?}"),
        },
        C5::MqttState(state) => format!("connection to the broker {broker} lost: {state}"),
        other => format!("connection to the broker {broker} failed: {other}"),
    }
}
