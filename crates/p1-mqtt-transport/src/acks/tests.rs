use rumqttc::{Event, Incoming, Outgoing, PubAck, PubComp};

use super::Acks;

fn out(pkid: u16) -> Event {
    Event::Outgoing(Outgoing::Publish(pkid))
}

fn puback(pkid: u16) -> Event {
    Event::Incoming(Incoming::PubAck(PubAck::new(pkid)))
}

#[test]
fn acks_settle_the_message_of_their_packet_id() {
    let mut acks = Acks::new();
    acks.handed("a");
    acks.handed("b");
    assert_eq!(acks.len(), 2);
    assert_eq!(acks.on_event(&out(1)), None);
    assert_eq!(acks.on_event(&out(2)), None);
    // Out of order: each ack settles its own message.
    assert_eq!(acks.on_event(&puback(2)), Some("b"));
    assert_eq!(
        acks.on_event(&puback(2)),
        None,
        "a second ack settles nothing"
    );
    assert_eq!(acks.on_event(&puback(1)), Some("a"));
    assert!(acks.is_empty());
}

#[test]
fn qos0_settles_when_written_and_qos2_on_pubcomp() {
    let mut acks = Acks::new();
    acks.handed(1);
    assert_eq!(acks.on_event(&out(0)), Some(1));
    acks.handed(2);
    assert_eq!(acks.on_event(&out(7)), None);
    assert_eq!(
        acks.on_event(&Event::Incoming(Incoming::PubComp(PubComp::new(7)))),
        Some(2)
    );
    assert_eq!(acks.on_event(&Event::Incoming(Incoming::PingResp)), None);
}

#[test]
fn a_collision_parks_the_tag_until_its_packet_id_is_published() {
    let mut acks = Acks::new();
    acks.handed("a");
    acks.handed("b");
    assert_eq!(acks.on_event(&out(5)), None);
    assert_eq!(
        acks.on_event(&Event::Outgoing(Outgoing::AwaitAck(5))),
        None,
        "b waits for pkid 5"
    );
    assert_eq!(acks.on_event(&puback(5)), Some("a"));
    assert_eq!(acks.on_event(&out(5)), None);
    assert_eq!(acks.on_event(&puback(5)), Some("b"));
}

#[test]
fn clear_returns_the_unsettled_on_the_wire_first() {
    let mut acks = Acks::new();
    for tag in ["a", "b", "c"] {
        acks.handed(tag);
    }
    acks.on_event(&out(2));
    acks.on_event(&out(3));
    assert_eq!(acks.clear(), ["a", "b", "c"]);
    assert!(acks.is_empty());
}

#[test]
fn the_oldest_in_flight_message_is_by_send_order_not_packet_id() {
    let mut acks = Acks::new();
    acks.handed("a");
    acks.handed("b");
    acks.handed("c");
    // Packet ids wrapped: "a" went out last of the range, "b" and "c" after it with low ids.
    acks.published(1024);
    acks.published(1);
    acks.published(2);
    assert_eq!(acks.oldest_inflight(), Some(&"a"));
    assert_eq!(acks.acked(1024), Some("a"));
    assert_eq!(acks.oldest_inflight(), Some(&"b"));
    assert_eq!(acks.clear(), vec!["b", "c"]);
    assert_eq!(acks.oldest_inflight(), None);
}
