//! `p1gw record`: capture what a meter sends, for bug reports and replay
//! (docs/contracts.md §3).
//!
//! Opens the port like the serial source (exclusively, with a preset's line
//! settings and the request line driven), and appends every byte read to
//! FILE as it arrives, unbuffered, so nothing is lost when the process is
//! killed. The bytes are the data bits the meter sent: on 7-bit settings
//! bit 7 is masked, as the reader does, so `p1gw parse FILE` and a `replay`
//! source read the recording as the daemon would have read the line. Stops
//! on SIGINT or SIGTERM, or after `--seconds`; a telegram arriving just
//! then is finished first (for up to [`GRACE`]), so the recording ends with
//! a whole telegram.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use p1_reader::probe::Tally;
use p1_reader::{Consume, Port, SessionEnd};
use tokio_util::sync::CancellationToken;

use crate::exit::{Coded, Exit};
use crate::probe::{PresetArg, RequestArgs, open_error};

/// How long a stop waits for the telegram being received to end.
const GRACE: Duration = Duration::from_secs(2);

/// Arguments of `p1gw record`.
#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// The serial device, e.g. /dev/ttyUSB0 or a /dev/serial/by-id/ name.
    #[arg(long, value_name = "DEV")]
    port: PathBuf,
    /// Where to write the raw bytes (created, or truncated).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Line settings preset (`p1gw probe` finds the right one).
    #[arg(long, value_enum, default_value_t = PresetArg::Veitur)]
    preset: PresetArg,
    /// Stop after this many seconds (default: at SIGINT/SIGTERM).
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    #[command(flatten)]
    request: RequestArgs,
}

/// Whether the stream is inside a telegram: from a line-initial `/` to the
/// end of the `!` line (the decoder's framing, tracked byte by byte).
#[derive(Debug, Default)]
struct FrameEdge {
    mid_line: bool,
    in_frame: bool,
    bang_line: bool,
}

impl FrameEdge {
    /// Steps over one byte; true when it ended a telegram.
    fn step(&mut self, b: u8) -> bool {
        if b == b'\n' {
            self.mid_line = false;
            let ended = self.bang_line;
            if ended {
                self.in_frame = false;
                self.bang_line = false;
            }
            return ended;
        }
        if !self.mid_line {
            match b {
                b'/' => self.in_frame = true,
                b'!' if self.in_frame => self.bang_line = true,
                _ => {}
            }
        }
        self.mid_line = true;
        false
    }
}

/// Writes what the port delivers to the file and counts the telegrams in it.
struct Recorder {
    file: std::fs::File,
    tally: Tally,
    written: u64,
    error: Option<std::io::Error>,
    stop: CancellationToken,
    edge: FrameEdge,
    /// After a stop: fired when the telegram being received has ended; only
    /// bytes up to its end are written.
    grace: Option<CancellationToken>,
}

impl Consume for Recorder {
    fn consume(&mut self, bytes: &[u8]) -> u64 {
        let mut take = bytes.len();
        if let Some(grace) = &self.grace {
            take = 0;
            if self.edge.in_frame {
                take = bytes
                    .iter()
                    .position(|&b| self.edge.step(b))
                    .map_or(bytes.len(), |end| end + 1);
            }
            if !self.edge.in_frame {
                grace.cancel();
            }
        } else {
            for &b in bytes {
                self.edge.step(b);
            }
        }
        let bytes = &bytes[..take];
        if self.error.is_none() {
            // A `File` has no user-space buffer: each chunk reaches the OS now.
            match self.file.write_all(bytes) {
                Ok(()) => self.written += bytes.len() as u64,
                Err(e) => {
                    self.error = Some(e);
                    self.stop.cancel();
                    if let Some(grace) = &self.grace {
                        grace.cancel();
                    }
                }
            }
        }
        self.tally.consume(bytes)
    }
}

/// Runs `p1gw record`; returns the exit code.
pub(crate) fn run(args: &RecordArgs) -> anyhow::Result<u8> {
    let request = args.request.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let settings = args.preset.preset().settings();
        let mut port = Port::open(&args.port, &settings, &request).map_err(open_error)?;
        let file = std::fs::File::create(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        let stop = CancellationToken::new();
        let mut signals = crate::signals::Signals::new()?;
        let on_signal = stop.clone();
        let signal_task = tokio::spawn(async move {
            loop {
                if let crate::signals::Signal::Stop(_) = signals.next().await {
                    on_signal.cancel();
                    return;
                }
            }
        });
        let until = args
            .seconds
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        eprintln!(
            "p1gw record: {} at {} ({}), request line {} ({}), writing {}",
            args.port.display(),
            settings,
            args.preset.preset().as_str(),
            port.request_line(),
            request.mode.as_str(),
            args.out.display()
        );
        let mut recorder = Recorder {
            file,
            tally: Tally::new(p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES),
            written: 0,
            error: None,
            stop: stop.clone(),
            edge: FrameEdge::default(),
            grace: None,
        };
        let end = loop {
            let session = port.listen(&request, until, &stop, &mut recorder).await;
            if let Some(e) = &session.line_error {
                eprintln!("p1gw record: warning: {e}; recording anyway");
            }
            match session.end {
                // Silence re-toggles the request line; keep recording.
                SessionEnd::Silent(after) => {
                    eprintln!(
                        "p1gw record: no bytes for {} s; re-toggling the request line",
                        after.as_secs()
                    );
                }
                end => break end,
            }
        };
        signal_task.abort();
        if recorder.edge.in_frame && recorder.error.is_none() && !matches!(end, SessionEnd::Gone(_))
        {
            let grace = CancellationToken::new();
            recorder.grace = Some(grace.clone());
            let until = tokio::time::Instant::now() + GRACE;
            port.listen(&request, Some(until), &grace, &mut recorder)
                .await;
        }
        recorder.tally.finish();
        eprintln!(
            "p1gw record: wrote {} bytes ({} telegram(s), {} rejected) to {}",
            recorder.written,
            recorder.tally.telegrams,
            recorder.tally.counters().1,
            args.out.display()
        );
        if let Some(e) = recorder.error {
            return Err(
                anyhow::Error::new(e).context(format!("cannot write to {}", args.out.display()))
            );
        }
        match end {
            SessionEnd::Gone(why) => Err(Coded::error(
                Exit::IO,
                format!(
                    "{}: the port went away ({why}); the recording so far is in {}",
                    args.port.display(),
                    args.out.display()
                ),
            )),
            _ => Ok(Exit::OK),
        }
    })
}

#[cfg(test)]
mod tests;
