//! Checkpoints in the two key layouts users have, checked key by key.
//!
//! The model's own names are Wan's original ones (`blocks.0.self_attn.q`,
//! `blocks.0.ffn.0`, `blocks.0.modulation`, `head.head`, ...), the layout of
//! the released Wan2.1 and Matrix-Game 2.0 checkpoints. A diffusers
//! checkpoint (`WanTransformer3DModel`) is read through [`diffusers_to_wan`].
//! [`Weights::take`] hands a tensor to the model once, checking its shape;
//! [`Weights::finish`] then refuses a checkpoint with tensors the model did
//! not take.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::{Result, WanError};

/// The key layout of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// Wan's original names (`self_attn`, `ffn.0`, `modulation`, `head.head`).
    Wan,
    /// diffusers' `WanTransformer3DModel` names (`attn1`, `ffn.net.0.proj`,
    /// `scale_shift_table`, `proj_out`).
    Diffusers,
}

impl std::fmt::Display for KeyLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyLayout::Wan => "Wan",
            KeyLayout::Diffusers => "diffusers",
        })
    }
}

impl KeyLayout {
    /// The layout of a set of keys: diffusers' if any key has one of its
    /// own names, else Wan's. A `model.diffusion_model.` prefix (some
    /// single-file exports) is accepted and dropped by [`Weights`].
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str>) -> KeyLayout {
        let diffusers = [
            "condition_embedder.",
            ".attn1.",
            ".attn2.",
            "scale_shift_table",
            "proj_out.",
            ".ffn.net.",
        ];
        if keys
            .into_iter()
            .any(|k| diffusers.iter().any(|d| k.contains(d)))
        {
            KeyLayout::Diffusers
        } else {
            KeyLayout::Wan
        }
    }
}

/// Wan's original name of a diffusers `WanTransformer3DModel` key (the
/// inverse of diffusers' `convert_wan_transformer_to_diffusers`; the
/// fixtures check the two against each other).
pub fn diffusers_to_wan(key: &str) -> String {
    if key == "scale_shift_table" {
        return "head.modulation".into();
    }
    const RENAMES: [(&str, &str); 14] = [
        (
            "condition_embedder.time_embedder.linear_1",
            "time_embedding.0",
        ),
        (
            "condition_embedder.time_embedder.linear_2",
            "time_embedding.2",
        ),
        (
            "condition_embedder.text_embedder.linear_1",
            "text_embedding.0",
        ),
        (
            "condition_embedder.text_embedder.linear_2",
            "text_embedding.2",
        ),
        ("condition_embedder.time_proj", "time_projection.1"),
        (".attn1.", ".self_attn."),
        (".attn2.", ".cross_attn."),
        (".to_out.0.", ".o."),
        (".to_q.", ".q."),
        (".to_k.", ".k."),
        (".to_v.", ".v."),
        (".ffn.net.0.proj.", ".ffn.0."),
        (".ffn.net.2.", ".ffn.2."),
        ("proj_out.", "head.head."),
    ];
    let mut out = key.to_string();
    for (a, b) in RENAMES {
        out = out.replace(a, b);
    }
    out = out.replace(".scale_shift_table", ".modulation");
    // diffusers' norm2 (before cross-attention) is Wan's norm3, and back.
    out.replace(".norm2.", ".norm_swap.")
        .replace(".norm3.", ".norm2.")
        .replace(".norm_swap.", ".norm3.")
}

/// Wan's original name of a diffusers `AutoencoderKLWan` key: the flat
/// `encoder.downsamples.N` / `decoder.upsamples.N` lists (diffusers groups
/// the decoder's into `up_blocks.I.resnets.J` and `up_blocks.I.upsamplers.0`,
/// `num_res_blocks + 2` entries per level), `middle.0/1/2`, `head.0/2`,
/// `conv1`/`conv2` for the quantisation convolutions, and the residual
/// blocks' `residual.0/2/3/6` and `shortcut`.
pub fn vae_diffusers_to_wan(key: &str, num_res_blocks: usize) -> String {
    let resnet = |rest: &str| -> String {
        let mut r = format!(".{rest}");
        for (a, b) in [
            (".norm1.gamma", ".residual.0.gamma"),
            (".conv1.", ".residual.2."),
            (".norm2.gamma", ".residual.3.gamma"),
            (".conv2.", ".residual.6."),
            (".conv_shortcut.", ".shortcut."),
        ] {
            r = r.replace(a, b);
        }
        r[1..].to_string()
    };
    for side in ["encoder", "decoder"] {
        let Some(rest) = key.strip_prefix(side).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        for (a, b) in [
            ("conv_in.", "conv1."),
            ("norm_out.", "head.0."),
            ("conv_out.", "head.2."),
        ] {
            if let Some(r) = rest.strip_prefix(a) {
                return format!("{side}.{b}{r}");
            }
        }
        for (a, b) in [
            ("mid_block.resnets.0.", "middle.0."),
            ("mid_block.attentions.0.", "middle.1."),
            ("mid_block.resnets.1.", "middle.2."),
        ] {
            if let Some(r) = rest.strip_prefix(a) {
                return format!("{side}.{b}{}", resnet(r));
            }
        }
        if let Some(r) = rest.strip_prefix("down_blocks.") {
            let (n, r) = r.split_once('.').unwrap_or((r, ""));
            return format!("encoder.downsamples.{n}.{}", resnet(r));
        }
        if let Some(r) = rest.strip_prefix("up_blocks.") {
            let parts: Vec<&str> = r.splitn(4, '.').collect();
            if let [i, kind, j, r] = parts[..]
                && let (Ok(i), Ok(j)) = (i.parse::<usize>(), j.parse::<usize>())
            {
                let per_level = num_res_blocks + 2;
                match kind {
                    "resnets" => {
                        return format!("decoder.upsamples.{}.{}", i * per_level + j, resnet(r));
                    }
                    "upsamplers" => {
                        return format!(
                            "decoder.upsamples.{}.{r}",
                            i * per_level + num_res_blocks + 1
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(r) = key.strip_prefix("quant_conv.") {
        return format!("conv1.{r}");
    }
    if let Some(r) = key.strip_prefix("post_quant_conv.") {
        return format!("conv2.{r}");
    }
    key.to_string()
}

/// Prefixes a whole checkpoint's keys may carry, longest first.
const CHECKPOINT_PREFIXES: [&str; 2] = ["model.diffusion_model.", "model."];

/// A maker of the tensor a model asks for: (Wan name, shape) -> tensor.
type MakeTensor = Box<dyn Fn(&str, &[usize]) -> Result<Tensor> + Send + Sync>;

/// The tensors of a checkpoint under the model's (Wan's) names, each
/// handed out once; or random tensors of whatever shape the model asks for
/// ([`Weights::random`]: sizes and speed without a checkpoint).
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    taken: Mutex<BTreeSet<String>>,
    layout: KeyLayout,
    random_on: Option<Device>,
    /// Makes each tensor when the model asks for it ([`Weights::from_fn`]).
    make: Option<MakeTensor>,
    elements: AtomicUsize,
    /// Every (name, shape) handed out, in order.
    asked: Mutex<Vec<(String, Vec<usize>)>>,
    /// The prefix every key of the checkpoint had (dropped; errors name it).
    prefix: String,
}

impl Weights {
    /// Tensors under their checkpoint names, in either layout (detected).
    ///
    /// A prefix that every key carries is dropped: `model.diffusion_model.`
    /// (some single-file exports) or `model.` (the released Matrix-Game 2.0
    /// checkpoints, saved from a wrapper whose one sub-module is `model`).
    /// Errors name keys with it, as the file spells them.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let raw: Vec<(String, Tensor)> = tensors.into_iter().collect();
        let prefix = CHECKPOINT_PREFIXES
            .into_iter()
            .find(|p| !raw.is_empty() && raw.iter().all(|(k, _)| k.starts_with(p)))
            .unwrap_or("");
        let raw = raw
            .into_iter()
            .map(|(k, t)| (k[prefix.len()..].to_string(), t))
            .collect::<Vec<_>>();
        let layout = KeyLayout::detect(raw.iter().map(|(k, _)| k.as_str()));
        let mut w = Self::renamed(raw, layout, diffusers_to_wan);
        w.prefix = prefix.to_string();
        w
    }

    /// Tensors in `layout`, under Wan's names (`to_wan` renames diffusers' keys).
    fn renamed(
        raw: Vec<(String, Tensor)>,
        layout: KeyLayout,
        to_wan: impl Fn(&str) -> String,
    ) -> Self {
        let tensors = raw
            .into_iter()
            .map(|(k, t)| match layout {
                KeyLayout::Wan => (k, t),
                KeyLayout::Diffusers => (to_wan(&k), t),
            })
            .collect();
        Weights {
            tensors,
            taken: Mutex::new(BTreeSet::new()),
            layout,
            random_on: None,
            make: None,
            elements: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            prefix: String::new(),
        }
    }

    /// Random weights on `device` (normal, standard deviation 0.02; norm
    /// scales 1): a model of any configuration without a checkpoint, for
    /// sizes and timings.
    pub fn random(device: &Device) -> Self {
        Weights {
            tensors: BTreeMap::new(),
            taken: Mutex::new(BTreeSet::new()),
            layout: KeyLayout::Wan,
            random_on: Some(device.clone()),
            make: None,
            elements: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            prefix: String::new(),
        }
    }

    /// Tensors made by `make` as the model asks for them (name, shape): a
    /// model whose weights live elsewhere, e.g. trainable variables created
    /// on demand, without building it twice to learn its layout.
    pub fn from_fn(
        make: impl Fn(&str, &[usize]) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Weights {
            tensors: BTreeMap::new(),
            taken: Mutex::new(BTreeSet::new()),
            layout: KeyLayout::Wan,
            random_on: None,
            make: Some(Box::new(make)),
            elements: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            prefix: String::new(),
        }
    }

    /// A VAE's tensors under their checkpoint names, in either layout
    /// (detected: diffusers' `AutoencoderKLWan` has `down_blocks`,
    /// `mid_block`, `quant_conv`, ...).
    pub fn vae_from_tensors(
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        num_res_blocks: usize,
    ) -> Self {
        let raw: Vec<(String, Tensor)> = tensors.into_iter().collect();
        let marks = [
            "down_blocks.",
            "up_blocks.",
            "mid_block.",
            "quant_conv.",
            "conv_in.",
            "norm_out.",
            "conv_out.",
        ];
        let layout = if raw.iter().any(|(k, _)| marks.iter().any(|m| k.contains(m))) {
            KeyLayout::Diffusers
        } else {
            KeyLayout::Wan
        };
        Self::renamed(raw, layout, |k| vae_diffusers_to_wan(k, num_res_blocks))
    }

    /// A safetensors file's bytes, on `device`.
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        Ok(Self::from_tensors(candle_core::safetensors::load_buffer(
            bytes, device,
        )?))
    }

    /// Values handed to the model so far: its parameter count once built.
    pub fn elements_taken(&self) -> usize {
        self.elements.load(Ordering::Relaxed)
    }

    /// The (Wan name, shape) of every tensor handed out so far, in the
    /// order the model asked: a model's parameter layout, from a build on
    /// [`Weights::random`].
    pub fn shapes_taken(&self) -> Vec<(String, Vec<usize>)> {
        self.asked.lock().expect("not poisoned").clone()
    }

    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// The tensor `key` (a Wan name) with shape `shape`, as `dtype`.
    pub fn take(&self, key: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.elements
            .fetch_add(shape.iter().product::<usize>(), Ordering::Relaxed);
        self.asked
            .lock()
            .expect("not poisoned")
            .push((key.to_string(), shape.to_vec()));
        if let Some(device) = &self.random_on {
            let t = if key.contains("norm") {
                Tensor::ones(shape, DType::F32, device)?
            } else {
                Tensor::randn(0f32, 0.02, shape, device)?
            };
            return Ok(t.to_dtype(dtype)?);
        }
        if let Some(make) = &self.make {
            return Ok(make(key, shape)?.to_dtype(dtype)?);
        }
        let t = self.tensors.get(key).ok_or_else(|| WanError::MissingKey {
            key: self.checkpoint_name(key),
            expected: shape.to_vec(),
            layout: self.layout,
        })?;
        if t.dims() != shape {
            return Err(WanError::Shape {
                key: self.checkpoint_name(key),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        self.taken
            .lock()
            .expect("not poisoned")
            .insert(key.to_string());
        Ok(t.to_dtype(dtype)?)
    }

    /// Every tensor was taken: none is left over.
    pub fn finish(&self) -> Result<()> {
        let taken = self.taken.lock().expect("not poisoned");
        let left: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !taken.contains(*k))
            .map(|k| self.checkpoint_name(k))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(WanError::Unexpected { keys: left })
        }
    }

    /// A key as the checkpoint spells it (for errors).
    fn checkpoint_name(&self, wan_key: &str) -> String {
        match self.layout {
            KeyLayout::Wan => format!("{}{wan_key}", self.prefix),
            KeyLayout::Diffusers => format!("{}{wan_key} (Wan's name)", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_to_wan_names() {
        let cases = [
            ("blocks.3.attn1.to_q.weight", "blocks.3.self_attn.q.weight"),
            ("blocks.3.attn2.to_out.0.bias", "blocks.3.cross_attn.o.bias"),
            (
                "blocks.3.attn1.norm_k.weight",
                "blocks.3.self_attn.norm_k.weight",
            ),
            ("blocks.3.norm2.weight", "blocks.3.norm3.weight"),
            ("blocks.3.ffn.net.0.proj.weight", "blocks.3.ffn.0.weight"),
            ("blocks.3.ffn.net.2.bias", "blocks.3.ffn.2.bias"),
            ("blocks.3.scale_shift_table", "blocks.3.modulation"),
            ("scale_shift_table", "head.modulation"),
            ("proj_out.weight", "head.head.weight"),
            (
                "condition_embedder.time_proj.bias",
                "time_projection.1.bias",
            ),
            (
                "condition_embedder.text_embedder.linear_2.weight",
                "text_embedding.2.weight",
            ),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (d, w) in cases {
            assert_eq!(diffusers_to_wan(d), w, "{d}");
        }
        assert_eq!(
            KeyLayout::detect(cases.iter().map(|c| c.0)),
            KeyLayout::Diffusers
        );
        assert_eq!(KeyLayout::detect(cases.iter().map(|c| c.1)), KeyLayout::Wan);
    }

    /// The released Matrix-Game 2.0 checkpoint's keys all start with
    /// `model.`: read under Wan's names, named in errors as the file
    /// spells them.
    #[test]
    fn a_prefix_every_key_has_is_dropped_and_errors_name_it() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let w = Weights::from_tensors([
            ("model.blocks.0.action_model.t_qkv.weight".to_string(), t(6)),
            ("model.blocks.0.extra".to_string(), t(1)),
        ]);
        assert_eq!(w.layout(), KeyLayout::Wan);
        w.take("blocks.0.action_model.t_qkv.weight", &[6], DType::F32).unwrap();
        let e = w.take("blocks.0.action_model.proj_mouse.weight", &[2, 3], DType::F32).unwrap_err().to_string();
        assert!(e.contains("no tensor `model.blocks.0.action_model.proj_mouse.weight`"), "{e}");
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("model.blocks.0.extra"), "{e}");
        // Not every key has it: nothing is dropped.
        let w = Weights::from_tensors([("model.a".to_string(), t(1)), ("b".to_string(), t(1))]);
        assert!(w.take("a", &[1], DType::F32).is_err());
        w.take("model.a", &[1], DType::F32).unwrap();
        // The longer prefix wins.
        let w = Weights::from_tensors([("model.diffusion_model.head.head.bias".to_string(), t(2))]);
        w.take("head.head.bias", &[2], DType::F32).unwrap();
    }

    #[test]
    fn a_missing_misshaped_or_unexpected_key_is_named() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let w = Weights::from_tensors([
            ("blocks.0.attn1.to_q.bias".to_string(), t(4)),
            ("blocks.0.extra".to_string(), t(1)),
        ]);
        assert_eq!(w.layout(), KeyLayout::Diffusers);
        let e = w
            .take("blocks.0.self_attn.q.bias", &[8], DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blocks.0.self_attn.q.bias") && e.contains("[4]") && e.contains("[8]"),
            "{e}"
        );
        let e = w
            .take("blocks.0.self_attn.k.bias", &[4], DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tensor `blocks.0.self_attn.k.bias") && e.contains("diffusers"),
            "{e}"
        );
        w.take("blocks.0.self_attn.q.bias", &[4], DType::F32)
            .unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(
            e.contains("1 tensor(s)") && e.contains("blocks.0.extra"),
            "{e}"
        );
    }
}
