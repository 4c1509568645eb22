//! Import released Matrix-Game weights into a base store that `init` reads
//! (`[model] kind = "matrix_game"`, `base = ...`).
//!
//! The transformer's tensors (the released `base_distill.safetensors`:
//! Wan's keys and the action module's, under `model.`) become the policy's
//! parameters, checked name by name and shape by shape against the
//! configuration's network; the frozen Wan VAE and CLIP vision tower are
//! checked the same way and kept in their released key layouts. The store
//! is a pre-training store's checkpoint at step 0
//! (`pretrain/step-0000000/`: `model.safetensors`, `settings.json`,
//! `vae.safetensors`, `clip_vision.safetensors`), committed once; a second
//! import of the same files finds it committed and writes nothing.

use bytes::Bytes;
use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use wc_matrix_game::config::{ImageEncoderConfig, LatentCodecConfig};
use wc_matrix_game::{wan_error, MatrixGameConfig};
use wc_schemas::TensorSet;
use wc_stages::checkpoints::{step_dir, PretrainSettings, FROZEN_CLIP_FILE, FROZEN_VAE_FILE};
use wc_stages::StageError;
use wc_store::{ManifestState, PendingCommit, RunStore};
use wc_wan::{ClipVision, WanVae, Weights};

/// Named tensors of a weights file (in any dtype, on the CPU).
pub type NamedTensors = Vec<(String, Tensor)>;

/// The released files, read.
pub struct ReleasedWeights {
    /// The transformer (Wan's or diffusers' keys, a `model.` prefix allowed).
    pub transformer: NamedTensors,
    /// The Wan VAE (needed when the config codes with it).
    pub vae: Option<NamedTensors>,
    /// Wan's CLIP file (needed when the config reads CLIP tokens; only the
    /// vision tower's keys are kept).
    pub clip: Option<NamedTensors>,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    pub transformer_parameters: usize,
    pub vae_parameters: usize,
    pub clip_parameters: usize,
    /// False when the same import was committed already.
    pub written: bool,
}

/// The tensors as a set of f32 tensors, each checked finite, and added to
/// the import's fingerprint `h` (names, shapes and values, in name order).
fn set_of(tensors: &[(String, Tensor)], what: &str, h: &mut Sha256) -> Result<TensorSet, StageError> {
    let mut set = TensorSet::new();
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, t) in sorted {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(StageError::invalid(what, format!("tensor `{k}` holds {} at index {i}", v[i])));
        }
        let t = wc_schemas::Tensor::from_f32(t.dims(), &v);
        h.update(k.as_bytes());
        h.update(format!("{:?}", t.shape).as_bytes());
        h.update(&t.data);
        set.insert(k.clone(), t);
    }
    Ok(set)
}

/// Random weights of `cfg` in the released layouts (the transformer's keys
/// under `model.`, seeded; the VAE's and the CLIP tower's as Wan names
/// them: normal with standard deviation 0.02, norm scales 1, as
/// `Weights::random` makes them): a full-size base store for capacity runs
/// without the release (`model import --random-weights`).
pub fn random_release(cfg: &MatrixGameConfig, seed: u64) -> Result<ReleasedWeights, StageError> {
    let cpu = candle_core::Device::Cpu;
    let policy = wc_matrix_game::model::fresh_policy(cfg, seed, &cpu)?;
    let transformer = policy.params.vars().iter().map(|(k, v)| (format!("model.{k}"), v.as_tensor().clone())).collect();
    // A frozen network's tensors, made as it asks for them.
    let made = |build: &dyn Fn(&Weights) -> wc_wan::Result<()>| -> Result<NamedTensors, StageError> {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = kept.clone();
        let w = Weights::from_fn(move |name, shape| {
            let t = if name.contains("norm") { Tensor::ones(shape, DType::F32, &candle_core::Device::Cpu)? } else { Tensor::randn(0f32, 0.02, shape, &candle_core::Device::Cpu)? };
            sink.lock().expect("not poisoned").push((name.to_string(), t.clone()));
            Ok(t)
        });
        build(&w).map_err(|e| StageError::invalid("the Matrix-Game config", e.to_string()))?;
        drop(w);
        Ok(std::mem::take(&mut *kept.lock().expect("not poisoned")))
    };
    let vae = match &cfg.codec {
        LatentCodecConfig::Pixel => None,
        LatentCodecConfig::WanVae(c) => Some(made(&|w| WanVae::new(c, w).map(|_| ()))?),
    };
    let clip = match &cfg.image_encoder {
        ImageEncoderConfig::Patches => None,
        ImageEncoderConfig::ClipVision(c) => Some(made(&|w| ClipVision::new(c, w, DType::F32).map(|_| ()))?),
    };
    Ok(ReleasedWeights { transformer, vae, clip })
}

/// Import `released` as the base model of configuration `cfg` into `out`.
pub fn import_matrix_game(out: &RunStore, cfg: &MatrixGameConfig, released: ReleasedWeights) -> Result<ImportReport, StageError> {
    cfg.validate().map_err(|e| StageError::invalid("the Matrix-Game config", e))?;
    // The transformer: every tensor the network reads, none left over;
    // the parameters are those tensors under Wan's names (the policy's).
    let w = Weights::from_tensors(released.transformer);
    wc_wan::WanTransformer::new(&cfg.transformer, &w, DType::F32).and_then(|_| w.finish()).map_err(|e| StageError::invalid("the transformer's weights", wan_error(e).to_string()))?;
    let layout = w.shapes_taken();
    let transformer_parameters = layout.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let mut params = Vec::new();
    for (name, shape) in &layout {
        params.push((name.clone(), w.take(name, shape, DType::F32).map_err(|e| StageError::invalid("the transformer's weights", e.to_string()))?));
    }
    drop(w);
    let mut fp = Sha256::new();
    fp.update(serde_json::to_vec(cfg).expect("serialises"));
    let model = set_of(&params, "the transformer's weights", &mut fp)?;
    drop(params);
    // The frozen networks the config names, built once to check them.
    let mut frozen: Vec<(&str, TensorSet)> = Vec::new();
    let (mut vae_n, mut clip_n) = (0, 0);
    match (&cfg.codec, released.vae) {
        (LatentCodecConfig::Pixel, None) => {}
        (LatentCodecConfig::Pixel, Some(_)) => return Err(StageError::invalid("--vae", "the config codes with the pixel codec: no VAE is read")),
        (LatentCodecConfig::WanVae(_), None) => return Err(StageError::invalid("--vae", "the config codes with the Wan VAE: pass its weights (Wan2.1_VAE.pth)")),
        (LatentCodecConfig::WanVae(c), Some(t)) => {
            let w = Weights::vae_from_tensors(t.iter().cloned(), c.num_res_blocks);
            WanVae::new(c, &w).and_then(|_| w.finish()).map_err(|e| StageError::invalid("the VAE's weights", e.to_string()))?;
            vae_n = w.elements_taken();
            frozen.push((FROZEN_VAE_FILE, set_of(&t, "the VAE's weights", &mut fp)?));
        }
    }
    match (&cfg.image_encoder, released.clip) {
        (ImageEncoderConfig::Patches, None) => {}
        (ImageEncoderConfig::Patches, Some(_)) => return Err(StageError::invalid("--clip", "the config reads the first frame's patches: no CLIP tower is read")),
        (ImageEncoderConfig::ClipVision(_), None) => return Err(StageError::invalid("--clip", "the config reads CLIP image tokens: pass Wan's CLIP file (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)")),
        (ImageEncoderConfig::ClipVision(c), Some(t)) => {
            let t: NamedTensors = t.into_iter().filter(|(k, _)| c.reads(k)).collect();
            let w = Weights::from_tensors(t.iter().cloned());
            ClipVision::new(c, &w, DType::F32).and_then(|_| w.finish()).map_err(|e| StageError::invalid("the CLIP tower's weights", e.to_string()))?;
            clip_n = w.elements_taken();
            frozen.push((FROZEN_CLIP_FILE, set_of(&t, "the CLIP tower's weights", &mut fp)?));
        }
    }
    let fingerprint = hex::encode(fp.finalize());
    let settings = PretrainSettings { matrix_game: Some(cfg.clone()), dataset: format!("imported {fingerprint}"), ..Default::default() };
    let dir = step_dir(0);
    let mut pending = PendingCommit::begin(out, &dir, "import", Some(0), None, &fingerprint);
    let report = ImportReport { transformer_parameters, vae_parameters: vae_n, clip_parameters: clip_n, written: true };
    if let ManifestState::Committed(_) = pending.check(false)? {
        return Ok(ImportReport { written: false, ..report });
    }
    let p = format!("{dir}/model.safetensors");
    pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), &model)?)?;
    for (name, set) in &frozen {
        let p = format!("{dir}/{name}");
        pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), set)?)?;
    }
    let p = format!("{dir}/settings.json");
    pending.write(&p, Bytes::from(serde_json::to_vec_pretty(&settings).expect("serialises")))?;
    pending.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> NamedTensors {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan").join(name);
        candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap().into_iter().collect()
    }

    /// A tiny-wan transformer in the released layout: seeded weights under
    /// `model.`.
    fn released_transformer(cfg: &MatrixGameConfig) -> NamedTensors {
        random_release(cfg, 5).unwrap().transformer
    }

    #[test]
    fn random_weights_in_the_released_layouts_import() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::open(&format!("file://{}", tmp.path().display())).unwrap();
        let cfg = MatrixGameConfig::tiny_wan();
        let r = import_matrix_game(&store, &cfg, random_release(&cfg, 3).unwrap()).unwrap();
        // The same sizes as the fixtures' files.
        let fixtures = ReleasedWeights { transformer: released_transformer(&cfg), vae: Some(fixture("vae_wan.safetensors")), clip: Some(fixture("clip_vision_wan.safetensors")) };
        let tmp2 = tempfile::tempdir().unwrap();
        let f = import_matrix_game(&RunStore::open(&format!("file://{}", tmp2.path().display())).unwrap(), &cfg, fixtures).unwrap();
        assert_eq!((r.transformer_parameters, r.vae_parameters, r.clip_parameters), (f.transformer_parameters, f.vae_parameters, f.clip_parameters));
    }

    #[test]
    fn an_import_holds_the_released_weights_and_names_a_bad_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::open(&format!("file://{}", tmp.path().display())).unwrap();
        let cfg = MatrixGameConfig::tiny_wan();
        let released = || ReleasedWeights { transformer: released_transformer(&cfg), vae: Some(fixture("vae_wan.safetensors")), clip: Some(fixture("clip_vision_wan.safetensors")) };
        let r = import_matrix_game(&store, &cfg, released()).unwrap();
        assert!(r.written && r.transformer_parameters > 0 && r.vae_parameters > 0 && r.clip_parameters > 0, "{r:?}");
        // The base loads as the released weights, and names the frozen files.
        let (p, step, _) = wc_stages::checkpoints::load_matrix_game_checkpoint(&store, None, &candle_core::Device::Cpu).unwrap();
        assert_eq!(step, 0);
        let key = "blocks.0.action_model.keyboard_attn_kv.weight";
        let want = released().transformer.into_iter().find(|(k, _)| k == &format!("model.{key}")).unwrap().1;
        let got = p.params.vars()[key].as_tensor().clone();
        assert_eq!((got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let frozen = wc_stages::checkpoints::matrix_game_frozen_files(&store, None).unwrap();
        assert_eq!(frozen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![wc_stages::layout::MATRIX_GAME_VAE, wc_stages::layout::MATRIX_GAME_CLIP]);
        // The same import again writes nothing.
        assert!(!import_matrix_game(&store, &cfg, released()).unwrap().written);
        // A missing action-module key is named as the file spells it.
        let tmp2 = tempfile::tempdir().unwrap();
        let store2 = RunStore::open(&format!("file://{}", tmp2.path().display())).unwrap();
        let mut bad = released();
        bad.transformer.retain(|(k, _)| k != &format!("model.{key}"));
        let err = import_matrix_game(&store2, &cfg, bad).unwrap_err().to_string();
        assert!(err.contains(&format!("model.{key}")), "{err}");
        // A config that codes with the VAE refuses an import without it.
        let err = import_matrix_game(&store2, &cfg, ReleasedWeights { vae: None, ..released() }).unwrap_err().to_string();
        assert!(err.contains("Wan VAE"), "{err}");
    }
}
