//! Polling one connection's rumqttc event loop in a task of its own.

use rumqttc::{ConnectionError, Event, EventLoop};
use tokio::sync::mpsc;

/// An event of connection `generation` (the caller's connection counter), or its end.
pub type Polled = (u64, Result<Event, ConnectionError>);

/// The same for an MQTT 5 connection ([`poll_events_v5`]).
pub type Polled5 = (
    u64,
    Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>,
);

/// Polls `eventloop` to its first error and sends every event, tagged with `generation`, to
/// `tx`; the error is the last thing sent. Returns early when `tx` is closed.
///
/// The caller runs this in a task of its own per connection and aborts it when it gives the
/// connection up. Polling never stops while the connection lives (keep-alive pings go out from
/// `poll()`), so the caller must drain `tx` promptly.
///
/// # The lost PUBACK
///
/// rumqttc reads packets in bulk: a PUBACK read together with the end of the connection (a
/// server that acks and then closes, as IoT Hub does at token expiry) is handled into the
/// state's event queue, but `poll()` returns the read error first and a new event loop would
/// never hand the ack out. This function drains that queue before it reports the error, so the
/// ack is not lost and the message is not sent twice.
///
/// It also turns Nagle's algorithm off for the connection (`TCP_NODELAY`):
/// with it on, every small PUBLISH waits for the broker's delayed ACK
/// (~40 ms), which capped a backlog drain at ~1 400 messages/s (measured in
/// docs/performance.md, "Sinks").
///
/// The channel may carry any type made from a [`Polled`], so that a caller speaking both
/// protocol versions can merge them into one channel.
pub async fn poll_events<T: From<Polled>>(
    generation: u64,
    mut eventloop: EventLoop,
    tx: mpsc::Sender<T>,
) {
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    forward(generation, eventloop, tx).await;
}

/// [`poll_events`] for rumqttc's MQTT 5 event loop: the same contract, the same drain of
/// events read together with the end of the connection. `TCP_NODELAY` is the caller's to set
/// (in the v5 client it lives in `MqttOptions`, read at connect).
///
/// # Acks rumqttc cannot read
///
/// rumqttc 0.25 decodes only the PUBACK reason codes of MQTT 5 §3.4.2.1. Mosquitto 2.0
/// answers a message over its `message_size_limit` with PUBACK 0x95 (packet too large),
/// which rumqttc fails to decode: the connection then ends with
/// `MqttState(Deserialization(InvalidConnectReturnCode(149)))`, the PUBACKs read before it
/// still handed out by the drain. The caller must recognise that error, or the message is
/// sent again on every reconnect.
pub async fn poll_events_v5<T: From<Polled5>>(
    generation: u64,
    eventloop: rumqttc::v5::EventLoop,
    tx: mpsc::Sender<T>,
) {
    forward(generation, eventloop, tx).await;
}

/// What [`forward`] needs of an event loop: rumqttc's v4 and v5 loops have the same shape but
/// no trait in common.
trait EventSource {
    type Event;
    type Error;
    /// The next event, or the end of the connection (`EventLoop::poll`).
    fn next_event(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send;
    /// An event already read and handled into the state's queue but not handed out yet.
    fn pop_buffered(&mut self) -> Option<Self::Event>;
}

impl EventSource for EventLoop {
    type Event = Event;
    type Error = ConnectionError;
    fn next_event(&mut self) -> impl Future<Output = Result<Event, ConnectionError>> + Send {
        self.poll()
    }
    fn pop_buffered(&mut self) -> Option<Event> {
        self.state.events.pop_front()
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    type Error = rumqttc::v5::ConnectionError;
    fn next_event(
        &mut self,
    ) -> impl Future<Output = Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>> + Send {
        self.poll()
    }
    fn pop_buffered(&mut self) -> Option<rumqttc::v5::Event> {
        self.state.events.pop_front()
    }
}

/// The loop of [`poll_events`] and [`poll_events_v5`]: every event to `tx` until the first
/// error; before the error, the events read together with it (the lost PUBACK).
async fn forward<L, T>(generation: u64, mut eventloop: L, tx: mpsc::Sender<T>)
where
    L: EventSource,
    T: From<(u64, Result<L::Event, L::Error>)>,
{
    loop {
        let event = eventloop.next_event().await;
        if event.is_err() {
            while let Some(buffered) = eventloop.pop_buffered() {
                if tx.send((generation, Ok(buffered)).into()).await.is_err() {
                    return;
                }
            }
            tx.send((generation, event).into()).await.ok();
            return;
        }
        if tx.send((generation, event).into()).await.is_err() {
            return;
        }
    }
}
