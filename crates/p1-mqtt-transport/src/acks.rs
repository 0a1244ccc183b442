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

use std::collections::{HashMap, VecDeque};

use rumqttc::{Event, Incoming, Outgoing};

/// Tags of published messages on their way to being acknowledged. See the [module docs](self).
#[derive(Debug)]
pub struct Acks<T> {
    /// Tags handed to rumqttc, not yet seen as `Outgoing::Publish`.
    fifo: VecDeque<T>,
    /// Tags by packet id, waiting for PUBACK/PUBCOMP.
    inflight: HashMap<u16, T>,
    /// A tag parked by a packet-id collision.
    collided: Option<(u16, T)>,
}

impl<T> Default for Acks<T> {
    fn default() -> Self {
        Acks {
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
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
        let mut sent: Vec<(u16, T)> = self.inflight.drain().collect();
        sent.sort_by_key(|(pkid, _)| *pkid);
        let mut out: Vec<T> = sent.into_iter().map(|(_, t)| t).collect();
        out.extend(self.collided.take().map(|(_, t)| t));
        out.extend(self.fifo.drain(..));
        out
    }

    /// Feeds one event of the connection; returns the tag it settled, if any. Events that have
    /// nothing to do with publishing are ignored.
    pub fn on_event(&mut self, event: &Event) -> Option<T> {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let pkid = *pkid;
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
                        self.inflight.insert(pkid, tag);
                        None
                    }
                    (None, _) => {
                        tracing::warn!(pkid, "MQTT publish without a tag; ignored.");
                        None
                    }
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                if let Some(tag) = self.fifo.pop_front() {
                    self.collided = Some((*pkid, tag));
                }
                None
            }
            Event::Incoming(Incoming::PubAck(ack)) => self.inflight.remove(&ack.pkid),
            Event::Incoming(Incoming::PubComp(comp)) => self.inflight.remove(&comp.pkid),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
