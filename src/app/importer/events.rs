//! The JSON lines `onnx/import_checkpoint.py` writes on its standard output, one event a line:
//! `{"event":"stage","stage":"export","state":"start"}`, `…"state":"done","seconds":34.7}`,
//! `{"event":"detected","family":"sd15","prediction_type":"epsilon"}`, `{"event":"done","out":DIR}`,
//! `{"event":"error","kind":"lora_mismatch","file":…,"message":…,"keys":[…]}`.

use serde::Deserialize;

/// The stages of an import, in the order they run (`lora` and `vae` only when asked for); the
/// Python conversion runs [`Stage::PYTHON`], an import through a template [`Stage::TEMPLATE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Detect,
    Load,
    Lora,
    Vae,
    Export,
    /// Writing the checkpoint's tensors into a copy of an import template (no Python).
    Fill,
    /// SD 2.x through a template: AUTOMATIC1111's v-prediction test on the filled UNet.
    Predict,
    Validate,
    Write,
}

impl Stage {
    pub const TEMPLATE: [Stage; 4] = [Stage::Lora, Stage::Fill, Stage::Predict, Stage::Write];

    pub const PYTHON: [Stage; 7] = [
        Stage::Detect,
        Stage::Load,
        Stage::Lora,
        Stage::Vae,
        Stage::Export,
        Stage::Validate,
        Stage::Write,
    ];

    /// What the stage does, for the progress display.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Detect => "detecting the family",
            Stage::Load => "loading the checkpoint (diffusers from_single_file)",
            Stage::Lora => "fusing the LoRAs",
            Stage::Vae => "replacing the VAE",
            Stage::Export => "exporting to ONNX (optimum)",
            Stage::Fill => "writing the checkpoint's tensors into the template",
            Stage::Predict => "deciding the prediction type (AUTOMATIC1111's test)",
            Stage::Validate => "checking the export",
            Stage::Write => "writing sdspool-source.json",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Start,
    Done,
}

/// One line of the tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Stage {
        stage: Stage,
        state: StageState,
        #[serde(default)]
        seconds: Option<f64>,
    },
    Detected {
        family: String,
        prediction_type: String,
    },
    Done {
        out: String,
    },
    Error {
        kind: String,
        #[serde(default)]
        file: Option<String>,
        message: String,
        #[serde(default)]
        keys: Vec<String>,
    },
}

/// Parses one line; an empty line is `None`.
pub fn parse(line: &str) -> Option<Result<Event, serde_json::Error>> {
    let line = line.trim();
    (!line.is_empty()).then(|| serde_json::from_str(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_lines_parse() {
        let e = parse(r#"{"event": "stage", "stage": "export", "state": "done", "seconds": 34.7}"#);
        assert_eq!(
            e.unwrap().unwrap(),
            Event::Stage {
                stage: Stage::Export,
                state: StageState::Done,
                seconds: Some(34.7)
            }
        );
        let e = parse(
            r#"{"event": "error", "kind": "truncated", "file": "x.safetensors", "message": "m", "keys": []}"#,
        );
        assert!(matches!(e.unwrap().unwrap(), Event::Error { kind, .. } if kind == "truncated"));
        assert!(parse("  ").is_none());
        assert!(parse("Loading pipeline components...").unwrap().is_err());
        assert!(
            parse(r#"{"event": "stage", "stage": "bake", "state": "start"}"#)
                .unwrap()
                .is_err()
        );
    }
}
