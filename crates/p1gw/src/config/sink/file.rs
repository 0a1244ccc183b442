//! `kind = "jsonl"` and `kind = "stdout"`: one JSON reading per line, to a file or to standard
//! output (p1-sink-file). No secrets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{MakeSink, PlanContext, Planned, SinkKind};
use crate::config::check::Checker;
use crate::config::locate::{KeyPath, Problems};
use crate::config::secret::EnvInputs;
use crate::config::source::non_empty_path;

/// `kind = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlTable {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
    /// The file readings are appended to, one JSON object per line; created if missing.
    pub path: PathBuf,
}

/// A validated JSON-lines sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJsonl {
    /// The file appended to.
    pub path: PathBuf,
}

impl SinkKind for JsonlTable {
    type Valid = ValidJsonl;

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

    fn validate(&self, at: &KeyPath, _: &EnvInputs, problems: &mut Problems) -> Option<ValidJsonl> {
        non_empty_path(&self.path, &at.key("path"), problems).map(|()| ValidJsonl {
            path: self.path.clone(),
        })
    }

    fn output_file(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

impl Planned for ValidJsonl {
    fn check(&self, checker: &mut Checker, at: &KeyPath) {
        checker.output_file(&self.path, &at.key("path"));
    }

    fn plan(&self, _: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)> {
        let path = self.path.clone();
        Ok((
            p1_sink_file::jsonl::KIND,
            Arc::new(move || p1_sink_file::jsonl::sink(path.clone())),
        ))
    }
}

/// `kind = "stdout"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutTable {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
}

/// A validated standard-output sink: nothing to configure.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidStdout;

impl SinkKind for StdoutTable {
    type Valid = ValidStdout;

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

    fn validate(&self, _: &KeyPath, _: &EnvInputs, _: &mut Problems) -> Option<ValidStdout> {
        Some(ValidStdout)
    }
}

impl Planned for ValidStdout {
    fn plan(&self, _: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)> {
        Ok((
            p1_sink_file::stdout::KIND,
            Arc::new(p1_sink_file::stdout::sink),
        ))
    }
}
