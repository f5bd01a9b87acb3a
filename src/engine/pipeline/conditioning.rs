//! What the UNet is conditioned on besides the latents and the timestep: the result of a
//! family's prompt encoding (diffusers' `encode_prompt`), as named UNet inputs, and the rule
//! that decides whether there is a negative-prompt half at all ([`is_guided`]).

use std::time::Duration;

use ndarray::ArrayD;

use super::PipelineError;

/// Whether a guidance scale runs classifier-free guidance, i.e. the negative prompt's half of
/// the UNet batch: above 1, as diffusers' `do_classifier_free_guidance`. Every part of sdspool
/// that needs to know (the pipeline, ETAs, the benchmark) asks here.
pub fn is_guided(guidance_scale: f32) -> bool {
    guidance_scale > 1.0
}

/// One conditioning input of the UNet for one image, batch axis of 1 included: its value for
/// the prompt and, with guidance, for the negative prompt.
#[derive(Debug, Clone)]
pub struct CondInput {
    /// The UNet's input name (from the family's graph).
    pub name: &'static str,
    pub cond: ArrayD<f32>,
    /// `None` without guidance.
    pub uncond: Option<ArrayD<f32>>,
}

/// Conditioning that takes over from a UNet call on (prompt editing, alternation).
#[derive(Debug, Clone)]
pub struct CondPhase {
    /// The 0-based UNet call from which `inputs` are used.
    pub from_step: usize,
    pub inputs: Vec<CondInput>,
}

/// The conditioning of one prompt, as the denoising loop feeds it: each input batched as
/// `[uncond × n, cond × n]` with guidance, `[cond × n]` without.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The UNet inputs the family supplies (SD: `encoder_hidden_states`; SDXL adds
    /// `text_embeds` and `time_ids`).
    pub inputs: Vec<CondInput>,
    /// The classifier-free guidance scale; `None` runs the prompt's half only.
    pub guidance: Option<f32>,
    /// Words of the prompt cut off by the tokenizer's length limit.
    pub truncated_prompt: Option<String>,
    /// Time spent in the tokenizer(s).
    pub tokenize: Duration,
}

/// A prompt's conditioning over the UNet calls: [`Conditioning`] from the first call, replaced
/// by the inputs of each later phase from its call on (prompt editing, alternation).
#[derive(Debug, Clone)]
pub struct ScheduledConditioning {
    pub start: Conditioning,
    /// By increasing `from_step`; empty when the conditioning never changes.
    pub later: Vec<CondPhase>,
}

impl ScheduledConditioning {
    /// Conditioning that does not change.
    pub fn constant(start: Conditioning) -> ScheduledConditioning {
        ScheduledConditioning {
            start,
            later: Vec::new(),
        }
    }

    /// Conditioning from its phases in step order: the first phase starts it, the others follow.
    /// No phase at all is a request for 0 steps.
    pub fn from_phases(
        phases: impl IntoIterator<Item = CondPhase>,
        guidance: Option<f32>,
        tokenize: Duration,
    ) -> Result<ScheduledConditioning, PipelineError> {
        let mut phases = phases.into_iter();
        let first = phases.next().ok_or_else(|| PipelineError::Request {
            field: "steps",
            problem: "is 0; at least one step is needed".into(),
        })?;
        Ok(ScheduledConditioning {
            start: Conditioning {
                inputs: first.inputs,
                guidance,
                truncated_prompt: None,
                tokenize,
            },
            later: phases.collect(),
        })
    }

    /// The inputs of the 0-based UNet call `step`.
    pub fn inputs_at(&self, step: usize) -> &[CondInput] {
        self.later
            .iter()
            .rev()
            .find(|p| p.from_step <= step)
            .map_or(&self.start.inputs, |p| &p.inputs)
    }

    /// Whether the inputs change at UNet call `step`.
    pub fn changes_at(&self, step: usize) -> bool {
        step > 0 && self.later.iter().any(|p| p.from_step == step)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guidance_above_one_is_guided() {
        for (g, guided) in [
            (7.5, true),
            (1.01, true),
            (1.0, false),
            (0.5, false),
            (0.0, false),
        ] {
            assert_eq!(super::is_guided(g), guided, "{g}");
        }
    }
}
