//! The Matrix-Game world model's configuration: the Wan network and the
//! frames around it.

use serde::{Deserialize, Serialize};
use wc_model::config::Prediction;
use wc_wan::{ActionModuleConfig, CausalSpec, ClipVisionConfig, ContextKind, WanTransformerConfig, WanVaeConfig};

fn first_frame_is_a_sink() -> usize {
    1
}

/// Keyboard keys (W, S, A, D) and mouse axes (pitch, yaw) per action step.
pub const KEYS: usize = 4;
pub const MOUSE_AXES: usize = 2;
/// Values of one action step: the keys, then the mouse.
pub const ACTION_WIDTH: usize = KEYS + MOUSE_AXES;

/// The codec whose latent frames the network denoises.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LatentCodecConfig {
    /// Pixels in [-1, 1] (`wc_model::codec::PixelCodec`): 3 channels, one
    /// latent frame per frame, one latent pixel per pixel.
    #[default]
    Pixel,
    /// The Wan VAE (Matrix-Game 2.0's codec): its normalised latents, the
    /// first frame coded alone, then one latent frame per
    /// `temporal_factor` frames.
    WanVae(WanVaeConfig),
}

/// What the cross-attention reads of the world prompt's first frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageEncoderConfig {
    /// The first latent frame's patches (`channels x patch x patch` values
    /// each): the embedded configuration's stand-in for CLIP.
    #[default]
    Patches,
    /// The CLIP vision tower's tokens (Matrix-Game 2.0: ViT-H/14, 257
    /// tokens of width 1280).
    ClipVision(ClipVisionConfig),
}

/// The world model: Matrix-Game 2.0's causal, action-conditioned Wan
/// transformer over latent frames of a codec.
///
/// - `codec`: the pixel codec (embedded: one latent frame per frame,
///   3 channels) or the Wan VAE (full size: 16 channels, 8x in space, a
///   latent frame per 4 frames after the first); `t` below is its frames
///   per latent frame, and the action module reads `t` action steps per
///   latent frame (`time_compression = t`).
/// - The network reads `2 channels + t` channels per latent frame, as
///   Matrix-Game reads 16 + 4 + 16: the noisy latent, then the
///   image-to-video condition: `t` mask channels (1 on latent frame 0) and
///   latent frame j of the codec's encoding of [first frame, grey frames]
///   (with the pixel codec: the first frame at frame 0, zeros after).
/// - `image_encoder`: the cross-attention reads the first frame's CLIP
///   tokens (full size) or the first latent frame's patches (embedded, the
///   stand-in).
/// - Blocks: the first frame alone, then one block per clip of
///   `frames_per_clip` latent frames; a block sees `window_frames` frames
///   back from its end, and the first frame always when it is a sink
///   (`sink_frames` 1; Matrix-Game 2.0 has none).
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
    /// block's end.
    pub window_frames: usize,
    /// 1: the first frame is an attention sink, seen by every block (the
    /// embedded configuration); 0: it leaves the window like any frame
    /// (Matrix-Game 2.0: "attention sink 0"). Configs written before this
    /// field read as 1.
    #[serde(default = "first_frame_is_a_sink")]
    pub sink_frames: usize,
    /// What the network's output is read as (`clean`: the clean clip, from
    /// which the velocity is derived; `velocity`: Matrix-Game's flow).
    pub prediction: Prediction,
    /// The network.
    pub transformer: WanTransformerConfig,
    /// The codec of the latent frames.
    #[serde(default)]
    pub codec: LatentCodecConfig,
    /// What the cross-attention reads of the first frame.
    #[serde(default)]
    pub image_encoder: ImageEncoderConfig,
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
            sink_frames: 1,
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
            codec: LatentCodecConfig::Pixel,
            image_encoder: ImageEncoderConfig::Patches,
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

    /// Matrix-Game 2.0's layout at a tiny size: the fixtures' tiny Wan VAE
    /// (4 channels, 4x in space, 2x in time) and tiny CLIP tower (17 tokens
    /// of width 32), 16x16 frames, clips of 2 latent frames (4 frames), 2
    /// blocks of width 48 with the action module. What tests run the
    /// full-size code paths on.
    pub fn tiny_wan() -> Self {
        let mut c = Self::tiny();
        let vae = WanVaeConfig::tiny();
        let clip = ClipVisionConfig::tiny();
        let tf = vae.temporal_factor();
        c.channels = vae.z_dim;
        c.frames_per_clip = 2;
        c.window_frames = 4;
        c.sink_frames = 0;
        let t = &mut c.transformer;
        t.patch_size = [1, 2, 2];
        t.in_channels = 2 * vae.z_dim + tf;
        t.out_channels = vae.z_dim;
        t.text_dim = clip.dim;
        t.action = Some(ActionModuleConfig { time_compression: tf, ..ActionModuleConfig::tiny() });
        c.codec = LatentCodecConfig::WanVae(vae);
        c.image_encoder = ImageEncoderConfig::ClipVision(clip);
        c
    }

    /// Matrix-Game 2.0 at full size: the released transformer
    /// (`WanTransformerConfig::matrix_game_2`), the Wan2.1 VAE and the CLIP
    /// ViT-H/14 tower, over `frame_size` square frames, clips of one causal
    /// block of 3 latent frames (12 frames), a window of 2 blocks, no
    /// attention sink.
    pub fn matrix_game_2(frame_size: usize) -> Self {
        let vae = WanVaeConfig::wan2_1();
        MatrixGameConfig {
            frame_size,
            channels: vae.z_dim,
            frames_per_clip: 3,
            window_frames: 6,
            sink_frames: 0,
            prediction: Prediction::Velocity,
            transformer: WanTransformerConfig::matrix_game_2(),
            codec: LatentCodecConfig::WanVae(vae),
            image_encoder: ImageEncoderConfig::ClipVision(ClipVisionConfig::vit_h_14()),
        }
    }

    /// The named preset (`embedded`, `tiny`, `tiny-wan`, or
    /// `matrix-game-2`, whose frames are 352x352).
    pub fn preset(name: &str) -> Result<Self, String> {
        match name {
            "embedded" | "default" => Ok(Self::embedded()),
            "tiny" => Ok(Self::tiny()),
            "tiny-wan" => Ok(Self::tiny_wan()),
            "matrix-game-2" => Ok(Self::matrix_game_2(352)),
            other => Err(format!("no Matrix-Game preset `{other}` (embedded, tiny, tiny-wan, matrix-game-2)")),
        }
    }

    /// Whether the model reads frozen networks (the Wan VAE, the CLIP
    /// tower), which a fresh model does not have and only an imported base
    /// store brings.
    pub fn reads_frozen_networks(&self) -> bool {
        self.codec != LatentCodecConfig::Pixel || self.image_encoder != ImageEncoderConfig::Patches
    }

    /// Frames per latent frame after the first (the codec's temporal
    /// factor; the action steps a latent frame reads per frame it codes).
    pub fn temporal(&self) -> usize {
        match &self.codec {
            LatentCodecConfig::Pixel => 1,
            LatentCodecConfig::WanVae(v) => v.temporal_factor(),
        }
    }

    /// Pixels per latent pixel along a side.
    pub fn spatial(&self) -> usize {
        match &self.codec {
            LatentCodecConfig::Pixel => 1,
            LatentCodecConfig::WanVae(v) => v.spatial_factor(),
        }
    }

    /// Side of a latent frame.
    pub fn latent_size(&self) -> usize {
        self.frame_size / self.spatial()
    }

    /// Frames of one clip (`frames_per_clip` latent frames).
    pub fn pixel_frames_per_clip(&self) -> usize {
        self.frames_per_clip * self.temporal()
    }

    /// Action steps in a context row: the actions into the frames its
    /// latent frame codes.
    pub fn steps_per_row(&self) -> usize {
        self.temporal()
    }

    /// Values of a context row: the latent frame, then its action steps.
    pub fn row_len(&self) -> usize {
        self.frame_len() + self.steps_per_row() * ACTION_WIDTH
    }

    /// Channels of the image-to-video condition: `t` mask channels, then
    /// the latent.
    pub fn condition_channels(&self) -> usize {
        self.temporal() + self.channels
    }

    /// Values of one latent frame's condition.
    pub fn condition_len(&self) -> usize {
        self.condition_channels() * self.latent_size() * self.latent_size()
    }

    /// Latent frames the condition covers: the context's and the target's
    /// (the first frame, the clip before, the target).
    pub fn condition_frames(&self) -> usize {
        1 + 2 * self.frames_per_clip
    }

    /// Width of an image token the cross-attention reads.
    pub fn image_token_dim(&self) -> usize {
        match &self.image_encoder {
            ImageEncoderConfig::Patches => self.channels * self.patch() * self.patch(),
            ImageEncoderConfig::ClipVision(c) => c.dim,
        }
    }

    /// The spatial patch size.
    pub fn patch(&self) -> usize {
        self.transformer.patch_size[1]
    }

    /// Values of one latent frame.
    pub fn frame_len(&self) -> usize {
        self.channels * self.latent_size() * self.latent_size()
    }

    /// Latent frames of a context: the first frame, then the clip before
    /// the target (the first frame repeated before clip 1).
    pub fn context_frames(&self) -> usize {
        1 + self.frames_per_clip
    }

    /// The block-causal rule: the first frame alone (kept as a sink when
    /// `sink_frames` is 1), then blocks of one clip.
    pub fn spec(&self) -> CausalSpec {
        CausalSpec {
            frames_per_block: self.frames_per_clip,
            local_window_frames: self.window_frames,
            sink_frames: self.sink_frames,
            first_block_frames: 1,
        }
    }

    /// Every size consistent with the others, or what is not.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.transformer;
        t.validate().map_err(|e| e.to_string())?;
        let p = self.patch();
        let a = t.action.as_ref().ok_or("the transformer needs its action module (`action`)")?;
        let (tf, sf) = (self.temporal(), self.spatial());
        let codec_channels = match &self.codec {
            LatentCodecConfig::Pixel => 3,
            LatentCodecConfig::WanVae(v) => {
                v.validate().map_err(|e| e.to_string())?;
                v.z_dim
            }
        };
        if let ImageEncoderConfig::ClipVision(c) = &self.image_encoder {
            c.validate().map_err(|e| e.to_string())?;
        }
        let latent = self.latent_size();
        let checks: [(bool, String); 11] = [
            (self.sink_frames <= 1, format!("sink_frames {}: only the first frame (1) or none (0) can be a sink", self.sink_frames)),
            (self.frame_size > 0 && self.frames_per_clip > 0 && self.channels > 0, "frame_size, channels and frames_per_clip must be at least 1".into()),
            (self.channels == codec_channels, format!("channels {} must be the codec's latent channels {codec_channels}", self.channels)),
            (self.frame_size.is_multiple_of(sf), format!("frame_size {} must be a multiple of the codec's spatial factor {sf}", self.frame_size)),
            (t.patch_size[0] == 1 && t.patch_size[2] == p && p > 0 && latent.is_multiple_of(p), format!("patch_size {:?}: one frame in time, square, dividing the latent frame's side {latent}", t.patch_size)),
            (t.in_channels == 2 * self.channels + tf, format!("in_channels {} must be 2 x channels + {tf} = {} (latent, {tf} mask channels, image latent)", t.in_channels, 2 * self.channels + tf)),
            (t.out_channels == self.channels, format!("out_channels {} must equal channels {}", t.out_channels, self.channels)),
            (t.context == ContextKind::ClipImage && t.text_dim == self.image_token_dim(), format!("the cross-attention reads image tokens of width {}: context = \"clip_image\", text_dim = {}", self.image_token_dim(), self.image_token_dim())),
            (a.time_compression == tf && a.keyboard_dim_in == KEYS && a.mouse_dim_in == MOUSE_AXES, format!("the action module reads {tf} step(s) per latent frame (time_compression {tf}, the codec's), 4 keys and 2 mouse axes")),
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
        MatrixGameConfig::tiny_wan().validate().unwrap();
        MatrixGameConfig::matrix_game_2(352).validate().unwrap();
        assert!(!MatrixGameConfig::embedded().reads_frozen_networks() && MatrixGameConfig::tiny_wan().reads_frozen_networks());
        let mut c = MatrixGameConfig::embedded();
        c.transformer.in_channels = 36;
        assert!(c.validate().unwrap_err().contains("in_channels 36 must be 2 x channels + 1 = 7"));
        let mut c = MatrixGameConfig::matrix_game_2(352);
        c.transformer.in_channels = 33;
        assert!(c.validate().unwrap_err().contains("in_channels 33 must be 2 x channels + 4 = 36"), "{:?}", c.validate());
        let mut c = MatrixGameConfig::tiny_wan();
        c.channels = 3;
        assert!(c.validate().unwrap_err().contains("the codec's latent channels 4"));
        let mut c = MatrixGameConfig::tiny_wan();
        c.frame_size = 18;
        assert!(c.validate().unwrap_err().contains("spatial factor 4"));
        let mut c = MatrixGameConfig::embedded();
        c.window_frames = 2;
        assert!(c.validate().unwrap_err().contains("window_frames 2"));
        assert!(MatrixGameConfig::preset("huge").unwrap_err().contains("embedded, tiny, tiny-wan"));
    }

    #[test]
    fn the_full_size_layout_is_matrix_game_2s() {
        // 352x352 frames: 44x44 latents of 16 channels, 36 input channels,
        // 12 frames and 3 latent frames per clip, 4 action steps a row.
        let c = MatrixGameConfig::matrix_game_2(352);
        assert_eq!((c.temporal(), c.spatial(), c.latent_size()), (4, 8, 44));
        assert_eq!((c.pixel_frames_per_clip(), c.condition_channels(), c.condition_frames()), (12, 20, 7));
        assert_eq!((c.frame_len(), c.row_len(), c.image_token_dim()), (16 * 44 * 44, 16 * 44 * 44 + 24, 1280));
        // The embedded layout is the same rule with the pixel codec.
        let e = MatrixGameConfig::embedded();
        assert_eq!((e.temporal(), e.latent_size(), e.row_len(), e.condition_channels()), (1, 32, 3 * 32 * 32 + 6, 4));
    }

    #[test]
    fn a_config_written_before_the_codec_field_reads_as_the_pixel_codec() {
        let mut v = serde_json::to_value(MatrixGameConfig::embedded()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("codec");
        o.remove("image_encoder");
        o.remove("sink_frames");
        let back: MatrixGameConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, MatrixGameConfig::embedded());
    }

    #[test]
    fn blocks_are_the_first_frame_then_whole_clips() {
        let s = MatrixGameConfig::embedded().spec();
        assert_eq!((s.block_at(0), s.block_at(1), s.block_at(5), s.block_at(3)), (Some(1), Some(4), Some(4), None));
        // Clip 2 (frames 5-8) sees the first frame and clip 1 (frames 1-4).
        assert!((0..9).all(|k| s.sees(5, k)));
        // Clip 3 (9-12) no longer sees clip 1, but still the first frame.
        assert!(s.sees(9, 0) && !s.sees(9, 4) && s.sees(9, 5));
        // Matrix-Game 2.0: no sink; a context's target block (frames 4-6)
        // sees the clip before and itself, not the first frame, which the
        // clip before (1-3) still sees.
        let s = MatrixGameConfig::matrix_game_2(352).spec();
        assert!(!s.sees(4, 0) && (1..7).all(|k| s.sees(4, k)) && s.sees(1, 0) && !s.sees(1, 4));
    }

    #[test]
    fn the_config_round_trips_through_json() {
        for c in [MatrixGameConfig::embedded(), MatrixGameConfig::tiny_wan()] {
            let back: MatrixGameConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }
}
