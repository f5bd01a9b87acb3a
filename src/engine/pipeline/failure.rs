//! A candidate that fails while the others of its batch render: NaN or infinity in its final
//! latent or in its decoded image (a float16 UNet or VAE that overflowed). The render goes on
//! with the other candidates; the job records the failure in its manifest
//! (`crate::jobs::run::manifest`), so it is typed and serializable, not a message.

use ndarray::ArrayViewD;
use serde::{Deserialize, Serialize};

/// Where in the pipeline a candidate's values stopped being finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The latent the denoising loop (or the refiner) ended with: the UNet overflowed.
    FinalLatent,
    /// The VAE decoder's output for a finite latent: the VAE overflowed.
    DecodedImage,
}

impl Stage {
    /// What users can do about it.
    fn hint(self) -> &'static str {
        match self {
            Stage::FinalLatent => {
                "the UNet overflowed (a float16 model at a guidance or size it cannot take?)"
            }
            Stage::DecodedImage => {
                "the VAE decoder overflowed (float16 SDXL VAE? configure a float32 or fp16-fixed \
                 `vae:` folder)"
            }
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::FinalLatent => "final latent",
            Stage::DecodedImage => "decoded image",
        })
    }
}

/// Why a candidate has no image. In a manifest: `{"reason": "non_finite", "stage": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum CandidateFailure {
    #[error("the {stage} has non-finite values (NaN or infinity); {}", stage.hint())]
    NonFinite { stage: Stage },
}

/// Whether one candidate's final latent and decoded image are usable: the first stage with a
/// value that is not finite fails it.
pub fn check(latent: ArrayViewD<'_, f32>, image: ArrayViewD<'_, f32>) -> Option<CandidateFailure> {
    let finite = |a: &ArrayViewD<'_, f32>| a.iter().all(|v| v.is_finite());
    let stage = if !finite(&latent) {
        Stage::FinalLatent
    } else if !finite(&image) {
        Stage::DecodedImage
    } else {
        return None;
    };
    Some(CandidateFailure::NonFinite { stage })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn the_first_stage_that_is_not_finite_fails_the_candidate() {
        let latent = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 2]));
        let image = ArrayD::<f32>::zeros(IxDyn(&[3, 16, 16]));
        assert_eq!(check(latent.view(), image.view()), None);
        let mut bad_image = image.clone();
        bad_image[[2, 15, 0]] = f32::INFINITY;
        let decoded = CandidateFailure::NonFinite {
            stage: Stage::DecodedImage,
        };
        assert_eq!(check(latent.view(), bad_image.view()), Some(decoded));
        let mut bad_latent = latent.clone();
        bad_latent[[3, 1, 0]] = f32::NAN;
        let failure = check(bad_latent.view(), bad_image.view()).unwrap();
        assert_eq!(
            failure,
            CandidateFailure::NonFinite {
                stage: Stage::FinalLatent
            }
        );
        assert!(
            failure
                .to_string()
                .starts_with("the final latent has non-finite values"),
            "{failure}"
        );
        assert_eq!(
            serde_json::to_value(decoded).unwrap(),
            serde_json::json!({"reason": "non_finite", "stage": "decoded_image"})
        );
    }
}
