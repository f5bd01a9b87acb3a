//! `scheduler_config.json`: every key optional, unknown keys ignored.

use std::path::Path;

use serde_json::{Map, Value};

use super::{SchedulerError, SchedulerKind};

/// A diffusers `scheduler_config.json`. Every key is optional: a missing (or `null`) key takes
/// the default of the scheduler class it is used with, as in diffusers' `from_config`. Keys this
/// port does not know are ignored; known keys with a value of the wrong JSON type are errors.
///
/// Values are kept as written (strings are checked by the class that uses them, since classes
/// accept different values, e.g. `prediction_type = "sample"` is fine for DDIM but not PNDM).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    /// Where the config came from, for messages (a file name, or `<inline>`).
    origin: String,
    /// `_class_name`: the diffusers class the model was saved with.
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear`, `squaredcos_cap_v2`.
    pub beta_schedule: Option<String>,
    /// Replaces `beta_start`/`beta_end`/`beta_schedule` when given.
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction`, `sample`.
    pub prediction_type: Option<String>,
    pub steps_offset: Option<usize>,
    /// `leading`, `trailing`, `linspace`.
    pub timestep_spacing: Option<String>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub skip_prk_steps: Option<bool>,
    /// Dynamic thresholding; only `false` is implemented.
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: `linear` only.
    pub interpolation_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler: `discrete` or `continuous`.
    pub timestep_type: Option<String>,
    /// `zero` or `sigma_min`.
    pub final_sigmas_type: Option<String>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    /// DDPM: `fixed_small`, `fixed_small_log`, `fixed_large`; DPM-Solver: must be unset.
    pub variance_type: Option<String>,
    /// UniPC.
    pub predict_x0: Option<bool>,
    /// UniPC: steps (0-based) after which the corrector is skipped.
    pub disable_corrector: Option<Vec<usize>>,
    /// DDIM's `eta` (0 = deterministic DDIM, 1 = DDPM-like noise). Not a scheduler_config.json
    /// key in diffusers (the pipeline passes it to `step`); a pipeline sets it per job.
    pub eta: Option<f64>,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SchedulerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors (a file name, or e.g. `"<inline>"`).
    ///
    /// Python's `json` writes `-Infinity`, `Infinity` and `NaN` (diffusers saves
    /// `lambda_min_clipped: -Infinity`); they are accepted.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, SchedulerError> {
        let value: Value =
            serde_json::from_str(&quote_python_constants(text)).map_err(|source| {
                SchedulerError::ParseConfig {
                    origin: origin.to_string(),
                    source,
                }
            })?;
        Self::from_value(&value, origin)
    }

    /// Reads a config from an already parsed JSON object.
    pub fn from_value(value: &Value, origin: &str) -> Result<Self, SchedulerError> {
        let Value::Object(map) = value else {
            return Err(SchedulerError::ConfigValue {
                origin: origin.to_string(),
                key: "(top level)".into(),
                problem: format!("must be a JSON object, got {}", type_name(value)),
            });
        };
        let r = Reader { map, origin };
        Ok(SchedulerConfig {
            origin: origin.to_string(),
            class_name: r.string("_class_name")?,
            num_train_timesteps: r.uint("num_train_timesteps")?,
            beta_start: r.float("beta_start")?,
            beta_end: r.float("beta_end")?,
            beta_schedule: r.string("beta_schedule")?,
            trained_betas: r.float_list("trained_betas")?,
            prediction_type: r.string("prediction_type")?,
            steps_offset: r.uint("steps_offset")?,
            timestep_spacing: r.string("timestep_spacing")?,
            clip_sample: r.boolean("clip_sample")?,
            clip_sample_range: r.float("clip_sample_range")?,
            set_alpha_to_one: r.boolean("set_alpha_to_one")?,
            skip_prk_steps: r.boolean("skip_prk_steps")?,
            thresholding: r.boolean("thresholding")?,
            rescale_betas_zero_snr: r.boolean("rescale_betas_zero_snr")?,
            interpolation_type: r.string("interpolation_type")?,
            use_karras_sigmas: r.boolean("use_karras_sigmas")?,
            use_exponential_sigmas: r.boolean("use_exponential_sigmas")?,
            use_beta_sigmas: r.boolean("use_beta_sigmas")?,
            use_lu_lambdas: r.boolean("use_lu_lambdas")?,
            use_flow_sigmas: r.boolean("use_flow_sigmas")?,
            use_dynamic_shifting: r.boolean("use_dynamic_shifting")?,
            sigma_min: r.float("sigma_min")?,
            sigma_max: r.float("sigma_max")?,
            timestep_type: r.string("timestep_type")?,
            final_sigmas_type: r.string("final_sigmas_type")?,
            solver_order: r.uint("solver_order")?,
            algorithm_type: r.string("algorithm_type")?,
            solver_type: r.string("solver_type")?,
            lower_order_final: r.boolean("lower_order_final")?,
            euler_at_final: r.boolean("euler_at_final")?,
            lambda_min_clipped: r.float("lambda_min_clipped")?,
            variance_type: r.string("variance_type")?,
            predict_x0: r.boolean("predict_x0")?,
            disable_corrector: r.uint_list("disable_corrector")?,
            eta: r.float("eta")?,
        })
    }

    /// Where this config came from (a file name), as used in error messages.
    pub fn origin(&self) -> &str {
        if self.origin.is_empty() {
            "<inline>"
        } else {
            &self.origin
        }
    }

    /// The scheduler the model was saved with, from `_class_name`.
    pub fn kind(&self) -> Result<SchedulerKind, SchedulerError> {
        match &self.class_name {
            Some(name) => name.parse(),
            None => Err(SchedulerError::ConfigValue {
                origin: self.origin().to_string(),
                key: "_class_name".into(),
                problem: "is missing, so the model's own scheduler is unknown; name one in the job"
                    .into(),
            }),
        }
    }
}

struct Reader<'a> {
    map: &'a Map<String, Value>,
    origin: &'a str,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, expected: &str, got: &Value) -> SchedulerError {
        SchedulerError::ConfigValue {
            origin: self.origin.to_string(),
            key: key.to_string(),
            problem: format!("must be {expected}, got {}", short(got)),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(key, "a string", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, "true or false", v)),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_uint(v)
                .map(Some)
                .ok_or_else(|| self.bad(key, "a non-negative integer", v)),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_float(v)
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number", v)),
        }
    }

    fn float_list(&self, key: &str) -> Result<Option<Vec<f64>>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(as_float)
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a list of numbers", &Value::Array(items.clone()))),
            Some(v) => Err(self.bad(key, "a list of numbers", v)),
        }
    }

    fn uint_list(&self, key: &str) -> Result<Option<Vec<usize>>, SchedulerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(as_uint)
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| {
                    self.bad(
                        key,
                        "a list of non-negative integers",
                        &Value::Array(items.clone()),
                    )
                }),
            Some(v) => Err(self.bad(key, "a list of non-negative integers", v)),
        }
    }
}

fn as_uint(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|u| usize::try_from(u).ok())
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == PY_NEG_INF => Some(f64::NEG_INFINITY),
        Value::String(s) if s == PY_POS_INF => Some(f64::INFINITY),
        Value::String(s) if s == PY_NAN => Some(f64::NAN),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!(
            "{} ({}...)",
            type_name(v),
            text.chars().take(40).collect::<String>()
        )
    } else {
        text
    }
}

// Sentinels for Python's non-standard JSON constants (strings nobody writes by hand).
const PY_NEG_INF: &str = "\u{1}-Infinity";
const PY_POS_INF: &str = "\u{1}Infinity";
const PY_NAN: &str = "\u{1}NaN";

/// Turns Python's bare `-Infinity`, `Infinity` and `NaN` (outside strings) into sentinel
/// strings that standard JSON accepts.
fn quote_python_constants(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let mut replaced = false;
        for (token, sentinel) in [
            ("-Infinity", PY_NEG_INF),
            ("Infinity", PY_POS_INF),
            ("NaN", PY_NAN),
        ] {
            if rest.starts_with(token) {
                out.push_str(&serde_json::to_string(sentinel).expect("string serializes"));
                rest = &rest[token.len()..];
                replaced = true;
                break;
            }
        }
        if replaced {
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
