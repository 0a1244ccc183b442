//! p1-core: what the reader, every sink and the HTTP server share.
//!
//! # Purpose
//!
//! The middle of p1gw's one pipe (meter → reader → broadcast → one worker per sink → backend):
//! the building blocks every long-running component needs, written once so that no sink copies
//! another's:
//!
//! * [`spool`]: [`Spool`] / [`AsyncSpool`], a sink's crash-safe on-disk FIFO. A worker appends
//!   each encoded reading *before* any network I/O and deletes it only on the backend's ack; a
//!   full spool evicts the oldest records and counts them.
//! * [`health`]: the [`Registry`] of component health, reported through cheap [`HealthHandle`]s,
//!   read by p1-http for `/readyz` ([`Registry::ready`]) and the live page
//!   ([`Registry::snapshot`]).
//! * [`shutdown`]: [`Shutdown`], the two-phase shutdown (stop token, hard token, task tracker
//!   with named tasks, [`ShutdownReport`]).
//! * [`backoff`]: [`Backoff`], capped exponential backoff with jitter for reconnects and
//!   delivery retries.
//! * [`error`]: the crate's one [`Error`] type.
//!
//! * [`reading`]: [`Reading`], one telegram of one meter, owned and normalised, with its
//!   docs/contracts.md §4 JSON rendered once for every consumer.
//! * [`sink`]: the [`Sink`] trait, the generic spool-backed worker [`Spooled`] (intake → spool →
//!   delivery, ack deletes) and [`sink::supervise`], which restarts a failed sink.
//!
//! # Place in the graph
//!
//! ```text
//! p1-telegram <- p1-core <- p1-reader | p1-sink-{mqtt,influx,azure} | p1-http <- p1gw
//! ```
//!
//! p1-core may use p1-telegram and nothing else of ours; everything to its right may use it.
//! Code two sinks need moves down into this crate, never sideways.
//!
//! # Never
//!
//! * No network I/O: sinks own their protocols; p1-core never connects, listens or resolves.
//! * No disk I/O outside [`spool`]: only the spool touches files (its own, under the directory
//!   it is given). p1-core reads no configuration files, environment or signals; p1gw does.
//! * No blocking of the async runtime: blocking spool calls go through [`AsyncSpool`]
//!   (`spawn_blocking`); no lock is held across `.await`; time comes from `tokio::time`.
//! * No panics on input from outside: a corrupt spool file is moved aside, not unwrapped.
#![warn(missing_docs)]

pub mod backoff;
pub mod codes;
pub mod error;
pub mod health;
pub mod reading;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod storage;

pub use backoff::Backoff;
pub use codes::{CodePattern, CodeRule, CodeTable, Quantity};
pub use error::{Error, Result};
pub use health::{ComponentKind, HealthHandle, Readiness, Registry, Snapshot, State};
pub use reading::{MeasuredValue, Measurement, Reading, SubmeterInfo};
pub use shutdown::{Shutdown, ShutdownReport};
pub use sink::{
    Batches, Deliver, DeliveryError, Encode, Pipelined, Sink, SinkContext, SinkError, Spooled,
};
pub use spool::{AppendOutcome, AsyncSpool, Batch, BatchOutcome, Durability, Spool, SpoolConfig};
pub use storage::{StorageFault, StorageKind};
