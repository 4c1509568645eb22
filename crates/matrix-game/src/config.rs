//! The Matrix-Game world model's configuration: the Wan network and the
//! frames around it.

use serde::{Deserialize, Serialize};
use wc_model::config::Prediction;
use wc_wan::{ActionModuleConfig, CausalSpec, ContextKind, WanTransformerConfig};

/// Keyboard keys (W, S, A, D) and mouse axes (pitch, yaw) per action step.
pub const KEYS: usize = 4;
pub const MOUSE_AXES: usize = 2;
/// Values of one action step: the keys, then the mouse.
pub const ACTION_WIDTH: usize = KEYS + MOUSE_AXES;

/// The world model: Matrix-Game 2.0's causal, action-conditioned Wan
/// transformer over latent frames of the pixel codec.
///
/// - One latent frame per pixel frame (`time_compression = 1` in the action
///   module), `channels` latent channels (3: the pixel codec).
/// - The network reads `2 channels + 1` channels per latent frame, as
///   Matrix-Game reads 16 + 4 + 16: the noisy latent, a mask, and the image
///   latent (the world prompt's first frame at frame 0, zeros elsewhere).
/// - The cross-attention reads the first frame's patches
///   (`channels x patch x patch` values each) through `img_emb`: the stand-in
///   for Matrix-Game's 257 CLIP ViT-H/14 tokens of the first frame.
/// - Blocks: the first frame alone (an attention sink), then one block per
///   clip; a block sees `window_frames` frames back from its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixGameConfig {
    /// Frame height and width in pixels.
    pub frame_size: usize,
    /// Latent channels of a frame.
    pub channels: usize,
    /// Frames per clip: one causal block.
    pub frames_per_clip: usize,
    /// Local attention window in latent frames, counted back from a
    /// block's end (the first frame, a sink, is always seen).
    pub window_frames: usize,
    /// What the network's output is read as (`clean`: the clean clip, from
    /// which the velocity is derived; `velocity`: Matrix-Game's flow).
    pub prediction: Prediction,
    /// The network.
    pub transformer: WanTransformerConfig,
}

impl MatrixGameConfig {
    /// The embedded world's size: 32x32 frames, patches of 8x8, 4 blocks of
    /// width 128, the action module in every block (1.3 M parameters; the
    /// embedded clip transformer has 2.3 M).
    pub fn embedded() -> Self {
        MatrixGameConfig {
            frame_size: 32,
            channels: 3,
            frames_per_clip: 4,
            window_frames: 8,
            prediction: Prediction::Clean,
            transformer: WanTransformerConfig {
                patch_size: [1, 8, 8],
                num_attention_heads: 4,
                attention_head_dim: 32,
                in_channels: 7,
                out_channels: 3,
                text_dim: 3 * 8 * 8,
                freq_dim: 64,
                ffn_dim: 256,
                num_layers: 4,
                cross_attn_norm: true,
                eps: 1e-6,
                rope_max_seq_len: 256,
                rope_theta: 10000.0,
                context: ContextKind::ClipImage,
                action: Some(ActionModuleConfig {
                    dim: 128,
                    keyboard_dim_in: KEYS,
                    mouse_dim_in: MOUSE_AXES,
                    keyboard_embed_dim: 16,
                    mouse_hidden_dim: 64,
                    keyboard_hidden_dim: 64,
                    heads: 4,
                    windows_size: 3,
                    time_compression: 1,
                    rope_temporal_dims: 8,
                    rope_theta: 256.0,
                }),
                action_blocks: 4,
            },
        }
    }

    /// A small configuration for tests: 16x16 frames, patches of 4x4, 2
    /// blocks of width 48.
    pub fn tiny() -> Self {
        let mut c = Self::embedded();
        c.frame_size = 16;
        let t = &mut c.transformer;
        t.patch_size = [1, 4, 4];
        t.num_attention_heads = 2;
        t.attention_head_dim = 24;
        t.text_dim = 3 * 4 * 4;
        t.freq_dim = 16;
        t.ffn_dim = 64;
        t.num_layers = 2;
        t.action_blocks = 2;
        // The fixtures' tiny action module, one step per latent frame.
        t.action = Some(ActionModuleConfig { time_compression: 1, ..ActionModuleConfig::tiny() });
        c
    }

    /// The named preset (`embedded` or `tiny`).
    pub fn preset(name: &str) -> Result<Self, String> {
        match name {
            "embedded" | "default" => Ok(Self::embedded()),
            "tiny" => Ok(Self::tiny()),
            other => Err(format!("no Matrix-Game preset `{other}` (embedded, tiny)")),
        }
    }

    /// The spatial patch size.
    pub fn patch(&self) -> usize {
        self.transformer.patch_size[1]
    }

    /// Values of one latent frame.
    pub fn frame_len(&self) -> usize {
        self.channels * self.frame_size * self.frame_size
    }

    /// Latent frames of a context: the first frame, then the clip before
    /// the target (the first frame repeated before clip 1).
    pub fn context_frames(&self) -> usize {
        1 + self.frames_per_clip
    }

    /// The block-causal rule: the first frame alone and kept as a sink,
    /// then blocks of one clip.
    pub fn spec(&self) -> CausalSpec {
        CausalSpec {
            frames_per_block: self.frames_per_clip,
            local_window_frames: self.window_frames,
            sink_frames: 1,
            first_block_frames: 1,
        }
    }

    /// Every size consistent with the others, or what is not.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.transformer;
        t.validate().map_err(|e| e.to_string())?;
        let p = self.patch();
        let a = t.action.as_ref().ok_or("the transformer needs its action module (`action`)")?;
        let checks: [(bool, String); 8] = [
            (self.frame_size > 0 && self.frames_per_clip > 0 && self.channels > 0, "frame_size, channels and frames_per_clip must be at least 1".into()),
            (t.patch_size[0] == 1 && t.patch_size[2] == p && self.frame_size.is_multiple_of(p), format!("patch_size {:?}: one frame in time, square, dividing frame_size {}", t.patch_size, self.frame_size)),
            (t.in_channels == 2 * self.channels + 1, format!("in_channels {} must be 2 x channels + 1 = {} (latent, mask, image latent)", t.in_channels, 2 * self.channels + 1)),
            (t.out_channels == self.channels, format!("out_channels {} must equal channels {}", t.out_channels, self.channels)),
            (t.context == ContextKind::ClipImage && t.text_dim == self.channels * p * p, format!("the cross-attention reads the first frame's patches: context = \"clip_image\", text_dim = {}", self.channels * p * p)),
            (a.time_compression == 1 && a.keyboard_dim_in == KEYS && a.mouse_dim_in == MOUSE_AXES, "the action module reads one step per latent frame (time_compression 1), 4 keys and 2 mouse axes".into()),
            (t.action_blocks >= 1 && t.action_blocks <= t.num_layers, format!("action_blocks {} must be 1..={}", t.action_blocks, t.num_layers)),
            (self.window_frames >= self.frames_per_clip, format!("window_frames {} must hold at least one clip ({})", self.window_frames, self.frames_per_clip)),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(format!("invalid Matrix-Game config: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_are_valid_and_a_wrong_size_says_which() {
        MatrixGameConfig::embedded().validate().unwrap();
        MatrixGameConfig::tiny().validate().unwrap();
        let mut c = MatrixGameConfig::embedded();
        c.transformer.in_channels = 36;
        assert!(c.validate().unwrap_err().contains("in_channels 36 must be 2 x channels + 1 = 7"));
        let mut c = MatrixGameConfig::embedded();
        c.window_frames = 2;
        assert!(c.validate().unwrap_err().contains("window_frames 2"));
        assert!(MatrixGameConfig::preset("huge").unwrap_err().contains("embedded, tiny"));
    }

    #[test]
    fn blocks_are_the_first_frame_then_whole_clips() {
        let s = MatrixGameConfig::embedded().spec();
        assert_eq!((s.block_at(0), s.block_at(1), s.block_at(5), s.block_at(3)), (Some(1), Some(4), Some(4), None));
        // Clip 2 (frames 5-8) sees the first frame and clip 1 (frames 1-4).
        assert!((0..9).all(|k| s.sees(5, k)));
        // Clip 3 (9-12) no longer sees clip 1, but still the first frame.
        assert!(s.sees(9, 0) && !s.sees(9, 4) && s.sees(9, 5));
    }

    #[test]
    fn the_config_round_trips_through_json() {
        let c = MatrixGameConfig::embedded();
        let back: MatrixGameConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
