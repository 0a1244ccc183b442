//! Mapping rumqttc's packet ids back to the caller's messages.
//!
//! rumqttc gives a packet id to each QoS 1/2 publish only when its event loop takes it from the
//! request channel, and reports that as `Outgoing::Publish(pkid)`, in request order. So every
//! successful `try_publish` is [`Acks::handed`] a tag, pushed on a FIFO; each
//! `Outgoing::Publish(pkid)` pops the oldest tag and files it under `pkid`; the broker's
//! `PubAck(pkid)` (QoS 1) or `PubComp(pkid)` (QoS 2) settles it. For QoS 0 the
//! `Outgoing::Publish(0)` itself (emitted after the socket flush) settles it. rumqttc's
//! packet-id collision (`AwaitAck(pkid)`, only with out-of-order acks) parks the tag until the
//! same pkid is published.
//!
//! One `Acks` belongs to one connection (one event loop): clear it when the connection goes.
//!
//! [`Acks::on_event`] reads rumqttc's MQTT 3.1.1 events; an MQTT 5 caller feeds the same
//! steps through [`Acks::published`], [`Acks::await_ack`] and [`Acks::acked`].

use std::collections::{HashMap, VecDeque};

use rumqttc::{Event, Incoming, Outgoing};

/// Tags of published messages on their way to being acknowledged. See the [module docs](self).
#[derive(Debug)]
pub struct Acks<T> {
    /// Tags handed to rumqttc, not yet seen as `Outgoing::Publish`.
    fifo: VecDeque<T>,
    /// Tags by packet id, waiting for PUBACK/PUBCOMP, with the order they went out in.
    inflight: HashMap<u16, (u64, T)>,
    /// Publications so far, to order `inflight`.
    sent: u64,
    /// A tag parked by a packet-id collision.
    collided: Option<(u16, T)>,
}

impl<T> Default for Acks<T> {
    fn default() -> Self {
        Acks {
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            sent: 0,
            collided: None,
        }
    }
}

impl<T: Clone> Acks<T> {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// `try_publish` accepted the message tagged `tag`.
    pub fn handed(&mut self, tag: T) {
        self.fifo.push_back(tag);
    }

    /// Messages handed and not settled yet.
    pub fn len(&self) -> usize {
        self.fifo.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Whether every handed message is settled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (the connection is gone); returns the unsettled tags, those already
    /// on the wire first (by packet id), then those still queued in rumqttc.
    pub fn clear(&mut self) -> Vec<T> {
        let mut sent: Vec<(u64, T)> = self.inflight.drain().map(|(_, t)| t).collect();
        sent.sort_by_key(|(order, _)| *order);
        let mut out: Vec<T> = sent.into_iter().map(|(_, t)| t).collect();
        out.extend(self.collided.take().map(|(_, t)| t));
        out.extend(self.fifo.drain(..));
        out
    }

    /// Feeds one event of the connection; returns the tag it settled, if any. Events that have
    /// nothing to do with publishing are ignored.
    pub fn on_event(&mut self, event: &Event) -> Option<T> {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.published(*pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                self.await_ack(*pkid);
                None
            }
            Event::Incoming(Incoming::PubAck(ack)) => self.acked(ack.pkid),
            Event::Incoming(Incoming::PubComp(comp)) => self.acked(comp.pkid),
            _ => None,
        }
    }

    /// rumqttc wrote the oldest handed message under `pkid` (`Outgoing::Publish`); returns its
    /// tag when that settles it (QoS 0, `pkid` 0).
    pub fn published(&mut self, pkid: u16) -> Option<T> {
        let tag = match self.collided.take() {
            Some((parked, tag)) if parked == pkid && !self.inflight.contains_key(&pkid) => {
                Some(tag)
            }
            other => {
                self.collided = other;
                self.fifo.pop_front()
            }
        };
        match (tag, pkid) {
            (Some(tag), 0) => Some(tag),
            (Some(tag), pkid) => {
                self.sent += 1;
                self.inflight.insert(pkid, (self.sent, tag));
                None
            }
            (None, _) => {
                tracing::warn!(pkid, "MQTT publish without a tag; ignored.");
                None
            }
        }
    }

    /// rumqttc holds the oldest handed message back: `pkid` is still in flight
    /// (`Outgoing::AwaitAck`).
    pub fn await_ack(&mut self, pkid: u16) {
        if let Some(tag) = self.fifo.pop_front() {
            self.collided = Some((pkid, tag));
        }
    }

    /// The broker answered the message under `pkid` (PUBACK, PUBCOMP, or an MQTT 5 refusal);
    /// returns its tag.
    pub fn acked(&mut self, pkid: u16) -> Option<T> {
        self.inflight.remove(&pkid).map(|(_, tag)| tag)
    }

    /// The tag of the message that went out first of those still waiting for the broker's
    /// answer. A broker answers one client's QoS 1 messages in order, so this is the one its
    /// next PUBACK is for.
    pub fn oldest_inflight(&self) -> Option<&T> {
        self.inflight
            .values()
            .min_by_key(|(order, _)| *order)
            .map(|(_, tag)| tag)
    }
}

#[cfg(test)]
mod tests;
