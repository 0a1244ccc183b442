//! Writes readings as JSON lines to standard output.

use p1_core::sink::BoxFuture;
use p1_core::{Deliver, DeliveryError, Sink, Spooled};
use tokio::io::AsyncWriteExt as _;

use crate::JsonLine;

/// The sink kind in config.
pub const KIND: &str = "stdout";

/// Writes spooled lines to standard output, flushed per batch.
#[derive(Debug, Default)]
pub struct Stdout;

/// A stdout sink ready to run.
pub fn sink() -> Box<dyn Sink> {
    Box::new(Spooled::new(KIND, JsonLine, Stdout))
}

impl Deliver for Stdout {
    fn max_batch(&self) -> usize {
        512
    }

    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            let mut out = tokio::io::stdout();
            for (_, line) in records {
                out.write_all(line)
                    .await
                    .map_err(|e| DeliveryError::Transient {
                        message: format!("cannot write to standard output: {e}"),
                        retry_after: None,
                    })?;
            }
            out.flush().await.map_err(|e| DeliveryError::Transient {
                message: format!("cannot write to standard output: {e}"),
                retry_after: None,
            })?;
            Ok(records.len())
        })
    }
}
