//! CLIP skip as AUTOMATIC1111 does it: with `clip_skip: N` above 1 the UNet is conditioned on
//! the text encoder's hidden state `N - 1` layers before the last (`hidden_states[-N]`), passed
//! through the encoder's final layer norm (which `last_hidden_state` has and the intermediate
//! hidden states have not).
//!
//! The hidden states come from the export's `hidden_states.0..L` outputs (optimum writes them
//! when the text encoder's config has `output_hidden_states: true`, as it sets for SDXL). The
//! final layer norm's scale and shift are not outputs; they are recovered from the same run:
//! `last_hidden_state = γ · normalize(hidden_states.L) + β` holds for every token, so γ and β of
//! each channel are the least-squares line through the run's tokens (exact up to float32
//! rounding; the normalisation uses the config's `layer_norm_eps`).

use ndarray::{Array1, ArrayD, ArrayView2, Axis, Ix3};

use super::PipelineError;

/// The `hidden_states.i` outputs of a text encoder: `L + 1` of them for `L` layers.
pub fn hidden_state_count(output_names: &[String]) -> usize {
    output_names
        .iter()
        .filter(|n| {
            n.strip_prefix("hidden_states.")
                .is_some_and(|i| i.parse::<usize>().is_ok())
        })
        .count()
}

/// The output to condition on with `clip_skip` (at least 2) for an encoder with `states`
/// hidden-state outputs; `file` names the encoder in errors.
pub fn skipped_output(
    clip_skip: usize,
    states: usize,
    file: &str,
) -> Result<String, PipelineError> {
    if states == 0 {
        return Err(PipelineError::Request {
            field: "clip_skip",
            problem: format!(
                "needs the text encoder's hidden states, but {file} has no hidden_states.N \
                 outputs; re-export it with them (set \"output_hidden_states\": true in \
                 text_encoder/config.json before optimum-cli export onnx, as optimum does for \
                 SDXL)"
            ),
        });
    }
    let layers = states - 1;
    if clip_skip > layers {
        return Err(PipelineError::Request {
            field: "clip_skip",
            problem: format!("is {clip_skip}, but {file} has only {layers} layers"),
        });
    }
    Ok(format!("hidden_states.{}", layers + 1 - clip_skip))
}

/// `target` (`[n, seq, hidden]`) through the final layer norm that turns `last_state` (the last
/// hidden state) into `last_hidden_state`.
pub fn final_layer_norm(
    target: ArrayD<f32>,
    last_state: ArrayD<f32>,
    last_hidden_state: &ArrayD<f32>,
    eps: f64,
) -> Result<ArrayD<f32>, ndarray::ShapeError> {
    let hidden = *last_state.shape().last().unwrap_or(&0);
    let rows = |a: ArrayD<f32>| -> Result<ndarray::Array2<f32>, ndarray::ShapeError> {
        let a = a.into_dimensionality::<Ix3>()?;
        let n = a.len() / hidden.max(1);
        a.as_standard_layout()
            .into_owned()
            .into_shape_with_order((n, hidden))
    };
    let x = normalize(rows(last_state)?.view(), eps);
    let y = rows(last_hidden_state.clone())?;
    let (gamma, beta) = fit(&x, y.view());
    let shape = target.shape().to_vec();
    let mut out = normalize(rows(target)?.view(), eps);
    for mut row in out.rows_mut() {
        for ((v, g), b) in row.iter_mut().zip(&gamma).zip(&beta) {
            *v = (*v as f64 * g + b) as f32;
        }
    }
    out.into_shape_with_order(shape)
}

/// Each row minus its mean, over its standard deviation (biased, plus `eps`), as LayerNorm.
fn normalize(rows: ArrayView2<f32>, eps: f64) -> ndarray::Array2<f32> {
    let mut out = rows.to_owned();
    for mut row in out.rows_mut() {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = 1.0 / (var + eps).sqrt();
        row.mapv_inplace(|v| ((f64::from(v) - mean) * scale) as f32);
    }
    out
}

/// Per column: the least-squares `y = γ x + β` over the rows.
fn fit(x: &ndarray::Array2<f32>, y: ArrayView2<f32>) -> (Array1<f64>, Array1<f64>) {
    let n = x.len_of(Axis(0)) as f64;
    let cols = x.len_of(Axis(1));
    let mut gamma = Array1::zeros(cols);
    let mut beta = Array1::zeros(cols);
    for c in 0..cols {
        let xs = x.column(c);
        let ys = y.column(c);
        let mx = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let my = ys.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (&a, &b) in xs.iter().zip(ys) {
            let dx = f64::from(a) - mx;
            sxy += dx * (f64::from(b) - my);
            sxx += dx * dx;
        }
        let g = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        gamma[c] = g;
        beta[c] = my - g * mx;
    }
    (gamma, beta)
}

#[cfg(test)]
mod tests {
    use ndarray::{Array, ArrayD, IxDyn};

    /// γ and β recovered from a layer norm's input and output give the same layer norm.
    #[test]
    fn the_final_layer_norm_is_recovered_from_its_input_and_output() {
        let (n, seq, hidden) = (2, 9, 6);
        let wave = |k: f64| {
            Array::from_shape_fn(IxDyn(&[n, seq, hidden]), move |i| {
                let (a, b, c) = (i[0] as f64, i[1] as f64, i[2] as f64);
                ((a * 1.7 + b * 0.31 + c * c * 0.13 + k).sin() * (1.0 + c * 0.2)) as f32
            })
        };
        let gamma = [0.5, 1.5, -0.7, 2.0, 0.9, 1.1];
        let beta = [0.1, -0.3, 0.0, 0.25, -1.0, 0.7];
        let eps = 1e-5;
        let ln = |x: &ArrayD<f32>| -> ArrayD<f32> {
            let mut out = x.clone();
            for mut row in out.lanes_mut(ndarray::Axis(2)) {
                let m = row.iter().map(|&v| f64::from(v)).sum::<f64>() / hidden as f64;
                let var =
                    row.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / hidden as f64;
                for (c, v) in row.iter_mut().enumerate() {
                    *v = ((f64::from(*v) - m) / (var + eps).sqrt() * gamma[c] + beta[c]) as f32;
                }
            }
            out
        };
        let last = wave(0.0);
        let target = wave(2.0);
        let out = super::final_layer_norm(target.clone(), last.clone(), &ln(&last), eps).unwrap();
        let want = ln(&target);
        let worst = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }

    #[test]
    fn the_output_is_the_state_n_minus_1_layers_before_the_last() {
        assert_eq!(
            super::skipped_output(2, 13, "te").unwrap(),
            "hidden_states.11"
        );
        assert_eq!(
            super::skipped_output(12, 13, "te").unwrap(),
            "hidden_states.1"
        );
        let e = super::skipped_output(13, 13, "te").unwrap_err().to_string();
        assert!(e.contains("clip_skip") && e.contains("12 layers"), "{e}");
        let e = super::skipped_output(2, 0, "te.onnx")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("te.onnx") && e.contains("output_hidden_states"),
            "{e}"
        );
    }
}
