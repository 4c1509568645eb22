//! The model's configuration.

use serde::{Deserialize, Serialize};

/// What the network's output head predicts. The velocity the sampler and
/// the losses use is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The clean clip x; v = (z - x) / t. With large pixel patches (a token
    /// of 192 values at d_model 192) this learns far faster than predicting
    /// the high-dimensional noise content of v directly.
    #[default]
    Clean,
    /// The velocity v = eps - x directly.
    Velocity,
}

/// Sizes of the world model. Serialised into every checkpoint's run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Frame height and width in pixels.
    pub frame_size: usize,
    /// Square patch size; a token is one patch of one frame.
    pub patch: usize,
    /// Frames per clip (4 per action window).
    pub frames_per_clip: usize,
    /// Recent frames kept in the context besides the first frame.
    pub context_frames: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// MLP hidden size as a multiple of d_model.
    pub mlp_ratio: usize,
    /// What the output head predicts.
    #[serde(default)]
    pub prediction: Prediction,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            frame_size: 32,
            patch: 8,
            frames_per_clip: 4,
            context_frames: 2,
            d_model: 192,
            layers: 4,
            heads: 6,
            mlp_ratio: 2,
            prediction: Prediction::Clean,
        }
    }
}

/// Number of action inputs: 8 basic actions and a "dropped" flag (for
/// classifier-free guidance).
pub const ACTION_INPUTS: usize = 9;

impl ModelConfig {
    /// A small config for tests.
    pub fn tiny() -> Self {
        ModelConfig {
            frame_size: 16,
            patch: 4,
            frames_per_clip: 4,
            context_frames: 2,
            d_model: 48,
            layers: 2,
            heads: 2,
            mlp_ratio: 2,
            prediction: Prediction::Clean,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("frame_size", self.frame_size, 4096),
            ("patch", self.patch, 256),
            ("d_model", self.d_model, 65_536),
            ("heads", self.heads, 1024),
            ("layers", self.layers, 1024),
            ("mlp_ratio", self.mlp_ratio, 64),
            ("frames_per_clip", self.frames_per_clip, 1024),
            ("context_frames", self.context_frames, 1024),
        ];
        for (key, value, max) in sizes {
            if value > max {
                return Err(format!("{key} = {value} must be at most {max}"));
            }
        }
        if self.patch == 0 || self.frame_size % self.patch != 0 {
            return Err(format!("frame_size {} must be a multiple of patch {}", self.frame_size, self.patch));
        }
        if self.heads == 0 || self.d_model % self.heads != 0 {
            return Err(format!("d_model {} must be a multiple of heads {}", self.d_model, self.heads));
        }
        if self.d_model < self.token_dim() {
            return Err(format!(
                "d_model {} is narrower than a token ({} values): the first layer would lose information",
                self.d_model,
                self.token_dim()
            ));
        }
        if self.frames_per_clip == 0 || self.layers == 0 || self.mlp_ratio == 0 {
            return Err("frames_per_clip, layers and mlp_ratio must be at least 1".into());
        }
        Ok(())
    }

    /// 4-frame action windows per clip (at least 1).
    pub fn windows_per_clip(&self) -> usize {
        (self.frames_per_clip / crate::train::FRAMES_PER_WINDOW).max(1)
    }

    /// Tokens per frame.
    pub fn tokens_per_frame(&self) -> usize {
        (self.frame_size / self.patch).pow(2)
    }

    /// Values per token (3 channels of a patch).
    pub fn token_dim(&self) -> usize {
        3 * self.patch * self.patch
    }

    /// Context frames: the first frame and the recent ones.
    pub fn context_slots(&self) -> usize {
        1 + self.context_frames
    }

    /// Which frames a clip's context holds, as indices into the
    /// `frames_before` frames that come before the clip (the first frame at
    /// 0): the first frame, then the `context_frames` most recent ones, the
    /// first frame again where there are fewer. The one rule of
    /// pre-training, sampling and evaluation.
    pub fn context_frame_indices(&self, frames_before: usize) -> Vec<usize> {
        std::iter::once(0).chain((1..=self.context_frames).rev().map(|k| frames_before.saturating_sub(k))).collect()
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_the_first_frame_then_the_most_recent_ones() {
        let cfg = ModelConfig { context_frames: 2, ..ModelConfig::tiny() };
        // Before the first clip only the first frame exists.
        assert_eq!(cfg.context_frame_indices(1), vec![0, 0, 0]);
        // One frame after the first: it is the most recent.
        assert_eq!(cfg.context_frame_indices(2), vec![0, 0, 1]);
        // After two clips of 4 frames (9 frames): the first, then 7 and 8.
        assert_eq!(cfg.context_frame_indices(9), vec![0, 7, 8]);
        assert_eq!(ModelConfig { context_frames: 0, ..cfg }.context_frame_indices(9), vec![0]);
    }

    /// Regression test for "no upper bounds on sizes" (issue 28, 7) in the
    /// model config (`pretrain --layers`, a run's model.json).
    #[test]
    fn huge_model_sizes_are_errors_that_name_the_key() {
        assert!(ModelConfig::default().validate().is_ok() && ModelConfig::tiny().validate().is_ok());
        let huge = usize::MAX;
        for (key, cfg) in [
            ("layers", ModelConfig { layers: huge, ..ModelConfig::tiny() }),
            ("context_frames", ModelConfig { context_frames: huge, ..ModelConfig::tiny() }),
            ("d_model", ModelConfig { d_model: huge, ..ModelConfig::tiny() }),
            ("frame_size", ModelConfig { frame_size: huge, ..ModelConfig::tiny() }),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.starts_with(&format!("{key} = {huge}")) && e.contains("at most"), "{e}");
        }
    }
}
