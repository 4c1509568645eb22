//! Validated safetensors reading and writing.

use std::collections::BTreeMap;

use bytes::Bytes;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::SchemaError;
use crate::tensors::{Dim, TensorDType, TensorFileSchema};

/// A dense tensor in host memory: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: TensorDType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// A u8 tensor. Panics if `values.len()` is not the product of `shape`.
    pub fn from_u8(shape: &[usize], values: &[u8]) -> Self {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "values match the shape");
        Tensor { dtype: TensorDType::U8, shape: shape.to_vec(), data: values.to_vec() }
    }

    /// An f32 tensor. Panics if `values.len()` is not the product of `shape`
    /// (a programming error, not bad input).
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?} vs {} values", values.len());
        Tensor {
            dtype: TensorDType::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of an f32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        debug_assert_eq!(self.dtype, TensorDType::F32);
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors of one file, sorted by name.
pub type TensorSet = BTreeMap<String, Tensor>;

/// Sizes of the symbolic dimensions of a layout.
#[derive(Debug, Clone, Default)]
pub struct DimBindings {
    named: BTreeMap<&'static str, usize>,
    splices: BTreeMap<&'static str, Vec<usize>>,
}

impl DimBindings {
    pub fn new() -> Self {
        Self::default()
    }
    /// Bind a named dimension, e.g. `G = 8`.
    pub fn dim(mut self, name: &'static str, size: usize) -> Self {
        self.named.insert(name, size);
        self
    }
    /// Bind a spliced dimension list, e.g. `latent = [4, 3, 32, 32]`.
    pub fn splice(mut self, name: &'static str, sizes: &[usize]) -> Self {
        self.splices.insert(name, sizes.to_vec());
        self
    }

    fn resolve(&self, artifact: &str, shape: &[Dim]) -> Result<Vec<Option<usize>>, SchemaError> {
        let mut out = Vec::new();
        for d in shape {
            match d {
                Dim::Fixed(n) => out.push(Some(*n)),
                // An unbound named dimension matches any size.
                Dim::Named(n) => out.push(self.named.get(n).copied()),
                Dim::Splice(n) => {
                    let sizes = self.splices.get(n).ok_or_else(|| SchemaError::UnboundDim {
                        artifact: artifact.to_string(),
                        dim: format!("...{n}"),
                    })?;
                    out.extend(sizes.iter().map(|s| Some(*s)));
                }
            }
        }
        Ok(out)
    }
}

fn describe(expected: &[Option<usize>]) -> String {
    let parts: Vec<String> = expected
        .iter()
        .map(|d| d.map_or_else(|| "*".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn st_dtype(d: TensorDType) -> Dtype {
    match d {
        TensorDType::F32 => Dtype::F32,
        TensorDType::F64 => Dtype::F64,
        TensorDType::U8 => Dtype::U8,
        TensorDType::I64 => Dtype::I64,
    }
}

/// Our dtype of a safetensors dtype, or a WrongDType error naming the tensor.
fn dtype_of(artifact: &str, tensor: &str, d: Dtype) -> Result<TensorDType, SchemaError> {
    Ok(match d {
        Dtype::F32 => TensorDType::F32,
        Dtype::F64 => TensorDType::F64,
        Dtype::U8 => TensorDType::U8,
        Dtype::I64 => TensorDType::I64,
        other => {
            return Err(SchemaError::WrongDType {
                artifact: artifact.to_string(),
                tensor: tensor.to_string(),
                expected: "F32, F64, U8 or I64".into(),
                found: format!("{other:?}"),
            });
        }
    })
}

fn check(
    layout: &TensorFileSchema,
    bindings: &DimBindings,
    artifact: &str,
    name: &str,
    dtype: String,
    shape: &[usize],
) -> Result<(), SchemaError> {
    let spec = layout
        .tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| SchemaError::UnexpectedTensor {
            artifact: artifact.to_string(),
            tensor: name.to_string(),
            layout: layout.name.to_string(),
        })?;
    let expected_dtype = format!("{:?}", spec.dtype);
    if dtype != expected_dtype {
        return Err(SchemaError::WrongDType {
            artifact: artifact.to_string(),
            tensor: name.to_string(),
            expected: expected_dtype,
            found: dtype,
        });
    }
    let expected = bindings.resolve(artifact, &spec.shape)?;
    let ok = expected.len() == shape.len() && expected.iter().zip(shape).all(|(e, s)| e.is_none_or(|e| e == *s));
    if !ok {
        return Err(SchemaError::WrongShape {
            artifact: artifact.to_string(),
            tensor: name.to_string(),
            expected: describe(&expected),
            found: shape.to_vec(),
        });
    }
    Ok(())
}

fn check_complete<'a>(
    layout: &TensorFileSchema,
    bindings: &DimBindings,
    artifact: &str,
    present: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), SchemaError> {
    for spec in &layout.tensors {
        if !present.clone().any(|n| n == spec.name) {
            return Err(SchemaError::MissingTensor {
                artifact: artifact.to_string(),
                tensor: spec.name.to_string(),
                expected: format!("{:?} {}", spec.dtype, describe(&bindings.resolve(artifact, &spec.shape)?)),
            });
        }
    }
    Ok(())
}

/// Encode tensors as safetensors after validating them against `layout`.
pub fn write_tensors(
    layout: &TensorFileSchema,
    bindings: &DimBindings,
    artifact: &str,
    tensors: &TensorSet,
) -> Result<Bytes, SchemaError> {
    check_complete(layout, bindings, artifact, tensors.keys().map(String::as_str))?;
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        check(layout, bindings, artifact, name, format!("{:?}", t.dtype), &t.shape)?;
        if t.data.len() != t.numel() * t.dtype.size() {
            return Err(SchemaError::Invalid {
                artifact: artifact.to_string(),
                reason: format!("tensor '{name}' has {} bytes for shape {:?}", t.data.len(), t.shape),
            });
        }
        let view = TensorView::new(st_dtype(t.dtype), t.shape.clone(), &t.data).map_err(|e| SchemaError::Invalid {
            artifact: artifact.to_string(),
            reason: e.to_string(),
        })?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| SchemaError::Invalid {
        artifact: artifact.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Bytes::from(bytes))
}

/// Decode safetensors bytes and validate them against `layout`.
pub fn read_tensors(
    layout: &TensorFileSchema,
    bindings: &DimBindings,
    artifact: &str,
    bytes: &[u8],
) -> Result<TensorSet, SchemaError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| SchemaError::BadSafetensors {
        artifact: artifact.to_string(),
        reason: e.to_string(),
    })?;
    let names = st.names();
    check_complete(layout, bindings, artifact, names.iter().map(|s| s.as_ref()))?;
    let mut out = TensorSet::new();
    let mut views = st.tensors();
    // Deterministic order, so the first error reported is always the same.
    views.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in views {
        let dtype = dtype_of(artifact, &name, view.dtype())?;
        check(layout, bindings, artifact, &name, format!("{dtype:?}"), view.shape())?;
        out.insert(
            name,
            Tensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(out)
}

/// Encode any named tensors as safetensors (for files whose layout the
/// caller validates itself, such as model checkpoints: the model checks
/// every parameter's name and shape on load).
pub fn write_any(artifact: &str, tensors: &TensorSet) -> Result<Bytes, SchemaError> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(st_dtype(t.dtype), t.shape.clone(), &t.data)
                .map(|v| (name.clone(), v))
                .map_err(|e| SchemaError::Invalid { artifact: artifact.to_string(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| SchemaError::Invalid {
        artifact: artifact.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Bytes::from(bytes))
}

/// Decode any safetensors file of the supported dtypes.
pub fn read_any(artifact: &str, bytes: &[u8]) -> Result<TensorSet, SchemaError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| SchemaError::BadSafetensors {
        artifact: artifact.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = TensorSet::new();
    for (name, view) in st.tensors() {
        let dtype = dtype_of(artifact, &name, view.dtype())?;
        out.insert(name, Tensor { dtype, shape: view.shape().to_vec(), data: view.data().to_vec() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors;

    fn candidates(g: usize, latent: usize) -> TensorSet {
        let vals: Vec<f32> = (0..g * latent).map(|i| i as f32 * 0.5).collect();
        let mut s = TensorSet::new();
        s.insert("latents".into(), Tensor::from_f32(&[g, latent], &vals));
        s.insert("noise".into(), Tensor::from_f32(&[g, latent], &vals));
        s
    }

    #[test]
    fn roundtrip_and_values() {
        let b = DimBindings::new().dim("G", 3).splice("latent", &[4]);
        let bytes = write_tensors(&tensors::candidate_clips(), &b, "c.safetensors", &candidates(3, 4)).unwrap();
        let back = read_tensors(&tensors::candidate_clips(), &b, "c.safetensors", &bytes).unwrap();
        assert_eq!(back, candidates(3, 4));
        assert_eq!(back["latents"].to_f32()[5], 2.5);
    }

    #[test]
    fn wrong_shape_names_artifact_tensor_expected_found() {
        let b = DimBindings::new().dim("G", 3).splice("latent", &[4]);
        let bytes = write_tensors(
            &tensors::candidate_clips(),
            &DimBindings::new().dim("G", 2).splice("latent", &[4]),
            "c.safetensors",
            &candidates(2, 4),
        )
        .unwrap();
        let err = read_tensors(&tensors::candidate_clips(), &b, "iters/0/rollout/g.safetensors", &bytes).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("iters/0/rollout/g.safetensors") && msg.contains("'latents'") && msg.contains("[3, 4]") && msg.contains("[2, 4]"), "{msg}");
    }

    #[test]
    fn missing_tensor_and_truncation_are_clear_errors() {
        let b = DimBindings::new().dim("G", 2).splice("latent", &[4]);
        let mut only_latents = candidates(2, 4);
        only_latents.remove("noise");
        let err = write_tensors(&tensors::candidate_clips(), &b, "c", &only_latents).unwrap_err();
        assert!(matches!(err, SchemaError::MissingTensor { ref tensor, .. } if tensor == "noise"));
        let bytes = write_tensors(&tensors::candidate_clips(), &b, "c", &candidates(2, 4)).unwrap();
        for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
            let err = read_tensors(&tensors::candidate_clips(), &b, "c", &bytes[..cut]).unwrap_err();
            assert!(matches!(err, SchemaError::BadSafetensors { .. }), "cut {cut}: {err}");
        }
    }
}
