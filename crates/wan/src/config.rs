//! The Wan2.1 transformer's configuration: diffusers' `WanTransformer3DModel`
//! fields, read from either `config.json` (diffusers' or Wan's original),
//! and the released sizes.

use serde::{Deserialize, Serialize};

use crate::action_module::ActionModuleConfig;
use crate::{Result, WanError};

/// What the cross-attention reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextKind {
    /// Text embeddings through `text_embedding` (Linear, GELU(tanh),
    /// Linear): Wan2.1 text-to-video.
    #[default]
    Text,
    /// CLIP image tokens through `img_emb` (LayerNorm, Linear, GELU,
    /// Linear, LayerNorm): Matrix-Game 2.0, which reads no text.
    ClipImage,
}

/// The video diffusion transformer's shape (diffusers' field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanTransformerConfig {
    /// Patch size over (frames, height, width) of the latent video.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Latent channels in and out.
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the conditioning tokens: the text encoder's (4096 for
    /// umT5-XXL), or CLIP's (1280) with `context = "clip_image"`.
    pub text_dim: usize,
    /// Sinusoidal time embedding width.
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// An affine layer norm before cross-attention (else none).
    pub cross_attn_norm: bool,
    pub eps: f64,
    /// Positions covered by the rotary tables, per axis.
    pub rope_max_seq_len: usize,
    pub rope_theta: f64,
    /// What the cross-attention reads.
    #[serde(default)]
    pub context: ContextKind,
    /// Matrix-Game 2.0's action module, in blocks `0..action_blocks`
    /// (after cross-attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionModuleConfig>,
    #[serde(default)]
    pub action_blocks: usize,
}

impl WanTransformerConfig {
    /// Wan2.1-T2V-1.3B, the backbone of Matrix-Game 2.0.
    pub fn wan2_1_t2v_1_3b() -> Self {
        WanTransformerConfig {
            patch_size: [1, 2, 2],
            num_attention_heads: 12,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            eps: 1e-6,
            rope_max_seq_len: 1024,
            rope_theta: 10000.0,
            context: ContextKind::Text,
            action: None,
            action_blocks: 0,
        }
    }

    /// Matrix-Game 2.0 (the universal model): the 1.3B transformer reading
    /// 36 channels (noisy latent, mask, image latent), cross-attending to
    /// 257 CLIP image tokens, with the action module in blocks 0-14
    /// (docs/design/matrix-game-2.md).
    pub fn matrix_game_2() -> Self {
        WanTransformerConfig {
            in_channels: 36,
            text_dim: 1280,
            context: ContextKind::ClipImage,
            action: Some(ActionModuleConfig::matrix_game_2()),
            action_blocks: 15,
            ..Self::wan2_1_t2v_1_3b()
        }
    }

    /// A tiny model of Matrix-Game 2.0's architecture (tests).
    pub fn tiny_matrix_game() -> Self {
        WanTransformerConfig {
            in_channels: 4 + 4 + 4,
            text_dim: 16,
            context: ContextKind::ClipImage,
            action: Some(ActionModuleConfig::tiny()),
            action_blocks: 1,
            ..Self::tiny()
        }
    }

    /// Wan2.1-T2V-14B.
    pub fn wan2_1_t2v_14b() -> Self {
        WanTransformerConfig {
            num_attention_heads: 40,
            ffn_dim: 13824,
            num_layers: 40,
            ..Self::wan2_1_t2v_1_3b()
        }
    }

    /// The tiny random configuration of the test fixtures
    /// (`tests/fixtures/wan/make_fixtures.py`).
    pub fn tiny() -> Self {
        WanTransformerConfig {
            patch_size: [1, 2, 2],
            num_attention_heads: 2,
            attention_head_dim: 24,
            in_channels: 4,
            out_channels: 4,
            text_dim: 32,
            freq_dim: 16,
            ffn_dim: 64,
            num_layers: 2,
            cross_attn_norm: true,
            eps: 1e-6,
            rope_max_seq_len: 64,
            rope_theta: 10000.0,
            context: ContextKind::Text,
            action: None,
            action_blocks: 0,
        }
    }

    /// The model width (heads x head width).
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Values per patch of the latent video: channels x patch volume.
    pub fn patch_volume(&self) -> usize {
        self.patch_size.iter().product()
    }

    /// The head width's split over the rotary axes (frames, height,
    /// width): height and width get 2 * (head_dim / 6) each, frames the rest.
    pub fn rope_axes(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Parameters of the model with this configuration.
    pub fn parameter_count(&self) -> usize {
        let (d, f) = (self.dim(), self.ffn_dim);
        let linear = |i: usize, o: usize| i * o + o;
        let attention = 4 * linear(d, d) + 2 * d;
        let block = 2 * attention
            + if self.cross_attn_norm { 2 * d } else { 0 }
            + linear(d, f)
            + linear(f, d)
            + 6 * d;
        let context = match self.context {
            ContextKind::Text => linear(self.text_dim, d) + linear(d, d),
            ContextKind::ClipImage => {
                2 * self.text_dim
                    + linear(self.text_dim, self.text_dim)
                    + linear(self.text_dim, d)
                    + 2 * d
            }
        };
        let actions = self
            .action
            .as_ref()
            .map_or(0, |a| self.action_blocks * a.parameter_count());
        linear(self.in_channels * self.patch_volume(), d)
            + context
            + actions
            + linear(self.freq_dim, d)
            + linear(d, d)
            + linear(d, 6 * d)
            + self.num_layers * block
            + linear(d, self.out_channels * self.patch_volume())
            + 2 * d
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(WanError::Config(m));
        if self.patch_size.contains(&0)
            || self.num_attention_heads == 0
            || self.num_layers == 0
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return bad(
                "patch_size, num_attention_heads, num_layers and the channels must be at least 1"
                    .into(),
            );
        }
        if self.attention_head_dim < 6
            || !self.attention_head_dim.is_multiple_of(2)
            || self.rope_axes()[0] == 0
        {
            return bad(format!(
                "attention_head_dim {} must be even and at least 6 (it is split over 3 rotary axes)",
                self.attention_head_dim
            ));
        }
        if self.freq_dim == 0 || !self.freq_dim.is_multiple_of(2) {
            return bad(format!(
                "freq_dim {} must be even and positive",
                self.freq_dim
            ));
        }
        if !(self.eps > 0.0 && self.rope_theta > 0.0) {
            return bad("eps and rope_theta must be positive".into());
        }
        match &self.action {
            Some(a) if a.dim != self.dim() || self.action_blocks > self.num_layers => {
                return bad(format!(
                    "the action module's width {} must be the model's {} and action_blocks {} at most num_layers {}",
                    a.dim,
                    self.dim(),
                    self.action_blocks,
                    self.num_layers
                ));
            }
            None if self.action_blocks > 0 => {
                return bad("action_blocks without an action module".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Read a `config.json`: diffusers' (`WanTransformer3DModel`, the
    /// fields above) or Wan's original (`dim`, `num_heads`, `in_dim`, ...).
    /// Image-conditioned variants (an image embedding and its
    /// cross-attention) are not supported yet and are refused.
    pub fn from_json(text: &str) -> Result<Self> {
        let obj = &json_object(text)?;
        let num = |k: &str| obj.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        let float = |k: &str| obj.get(k).and_then(|x| x.as_f64());
        let set = |k: &str| obj.get(k).is_some_and(|x| !x.is_null());
        let cfg = if obj.contains_key("dim") {
            // Wan's original WanModel config.
            if let Some(t) = obj.get("model_type").and_then(|x| x.as_str())
                && t != "t2v"
            {
                return Err(WanError::Config(format!(
                    "model_type {t:?}: only the text-to-video transformer (t2v) is supported so far"
                )));
            }
            let need = |k: &str| {
                num(k).ok_or_else(|| {
                    WanError::Config(format!("Wan config: `{k}` is missing or not a number"))
                })
            };
            let (dim, heads) = (need("dim")?, need("num_heads")?);
            if heads == 0 || dim % heads != 0 {
                return Err(WanError::Config(format!(
                    "dim {dim} is not a multiple of num_heads {heads}"
                )));
            }
            let d = Self::wan2_1_t2v_1_3b();
            let patch = match obj.get("patch_size") {
                Some(p) => serde_json::from_value(p.clone())
                    .map_err(|e| WanError::Config(format!("patch_size: {e}")))?,
                None => d.patch_size,
            };
            WanTransformerConfig {
                patch_size: patch,
                num_attention_heads: heads,
                attention_head_dim: dim / heads,
                in_channels: need("in_dim")?,
                out_channels: need("out_dim")?,
                text_dim: num("text_dim").unwrap_or(d.text_dim),
                freq_dim: num("freq_dim").unwrap_or(d.freq_dim),
                ffn_dim: need("ffn_dim")?,
                num_layers: need("num_layers")?,
                cross_attn_norm: obj
                    .get("cross_attn_norm")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(true),
                eps: float("eps").unwrap_or(d.eps),
                rope_max_seq_len: d.rope_max_seq_len,
                rope_theta: d.rope_theta,
                context: ContextKind::Text,
                action: None,
                action_blocks: 0,
            }
        } else {
            if set("image_dim") || set("added_kv_proj_dim") || set("pos_embed_seq_len") {
                return Err(WanError::Config("image-conditioned Wan transformers (image_dim, added_kv_proj_dim) are not supported so far".into()));
            }
            if let Some(q) = obj.get("qk_norm")
                && q.as_str() != Some("rms_norm_across_heads")
            {
                return Err(WanError::Config(format!(
                    "qk_norm {q}: only \"rms_norm_across_heads\" is supported"
                )));
            }
            known_fields(obj, &Self::wan2_1_t2v_14b(), "diffusers config")?
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A `config.json` as a JSON object.
pub(crate) fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text).map_err(|e| WanError::Config(format!("not JSON: {e}")))? {
        serde_json::Value::Object(o) => Ok(o),
        _ => Err(WanError::Config("a config is a JSON object".into())),
    }
}

/// The fields of `T` read from `obj`, each one it lacks at its value in
/// `defaults`; keys `T` does not have (configs carry bookkeeping such as
/// `_class_name`) are ignored.
pub(crate) fn known_fields<T: Serialize + serde::de::DeserializeOwned>(
    obj: &serde_json::Map<String, serde_json::Value>,
    defaults: &T,
    what: &str,
) -> Result<T> {
    let d = serde_json::to_value(defaults).expect("a config serialises");
    let known: serde_json::Map<String, serde_json::Value> = d
        .as_object()
        .expect("a config is an object")
        .iter()
        .map(|(k, default)| {
            (
                k.clone(),
                obj.get(k).cloned().unwrap_or_else(|| default.clone()),
            )
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(known))
        .map_err(|e| WanError::Config(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_and_diffusers_configs_of_the_1_3b_model_read_the_same() {
        // Wan2.1-T2V-1.3B's config.json in Wan's repository, and diffusers'.
        let wan = r#"{"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960,
            "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512}"#;
        let diffusers = r#"{"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0", "added_kv_proj_dim": null,
            "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": null,
            "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        assert_eq!(
            WanTransformerConfig::from_json(wan).unwrap(),
            WanTransformerConfig::wan2_1_t2v_1_3b()
        );
        assert_eq!(
            WanTransformerConfig::from_json(diffusers).unwrap(),
            WanTransformerConfig::wan2_1_t2v_1_3b()
        );
    }

    #[test]
    fn image_conditioned_and_malformed_configs_are_refused_with_the_reason() {
        let i2v = r#"{"dim": 1536, "num_heads": 12, "in_dim": 36, "out_dim": 16, "ffn_dim": 8960, "num_layers": 30, "model_type": "i2v"}"#;
        assert!(
            WanTransformerConfig::from_json(i2v)
                .unwrap_err()
                .to_string()
                .contains("t2v")
        );
        let img = r#"{"num_attention_heads": 2, "image_dim": 1280}"#;
        assert!(
            WanTransformerConfig::from_json(img)
                .unwrap_err()
                .to_string()
                .contains("image_dim")
        );
        let odd = r#"{"dim": 100, "num_heads": 12, "in_dim": 16, "out_dim": 16, "ffn_dim": 8, "num_layers": 1}"#;
        assert!(
            WanTransformerConfig::from_json(odd)
                .unwrap_err()
                .to_string()
                .contains("multiple of num_heads")
        );
        let missing =
            r#"{"dim": 96, "num_heads": 2, "in_dim": 16, "out_dim": 16, "num_layers": 1}"#;
        assert!(
            WanTransformerConfig::from_json(missing)
                .unwrap_err()
                .to_string()
                .contains("ffn_dim")
        );
        let typo = r#"{"num_attention_head": 2}"#;
        assert!(
            WanTransformerConfig::from_json(typo).is_ok(),
            "diffusers configs carry extra bookkeeping keys; unknown ones are ignored"
        );
    }

    #[test]
    fn the_rotary_axes_split_the_head_as_wan_does() {
        // 128 = 44 (frames) + 42 + 42; Wan: c = 64 complex pairs, c // 3 = 21 each for height and width.
        assert_eq!(
            WanTransformerConfig::wan2_1_t2v_1_3b().rope_axes(),
            [44, 42, 42]
        );
        assert_eq!(WanTransformerConfig::tiny().rope_axes(), [8, 8, 8]);
    }

    #[test]
    fn the_1_3b_model_has_the_published_size() {
        // "1.3B": 1,418,996,800 parameters without the text encoder and the VAE
        // (30 blocks of 45.0 M, the embeddings and the head).
        let n = WanTransformerConfig::wan2_1_t2v_1_3b().parameter_count();
        assert_eq!(n, 1_418_996_800, "{n}");
        assert!((n as f64 / 1.3e9 - 1.0).abs() < 0.1);
    }
}
