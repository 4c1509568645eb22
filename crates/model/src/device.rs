//! Opening the device a user named (`cpu`, `cuda:N`) as a candle device.
//!
//! Nothing in the project picks a device by itself: every command that runs
//! a model opens the one the user chose (`--device`, `[run] device`), and a
//! build that cannot honour it says why instead of falling back silently.

use candle_core::Device;
use wc_config::DeviceSpec;

use crate::{ModelError, Result};

/// The candle device of `spec`.
///
/// `cuda:N` on a build without the `cuda` feature, or where GPU N cannot be
/// opened, is a [`ModelError::Device`] that says what to do.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(n),
    }
}

/// One candle device per GPU per process: candle gives every
/// `Device::new_cuda` call its own identity, and tensors of two identities
/// cannot meet in one op, so a command that loads a run's policy and a pose
/// estimator separately must get the same device both times.
#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPENED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut opened = OPENED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = opened.get(&n) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(n).map_err(|e| ModelError::Device {
        device: DeviceSpec::Cuda(n).to_string(),
        reason: format!(
            "cannot open GPU {n}: {e}. Check `nvidia-smi`, and that libcuda.so.1, libcublas.so.13, libcublasLt.so.13, \
             libcurand.so.10 and libcudart.so.13 are on LD_LIBRARY_PATH (README, section \"GPU\")"
        ),
    })?;
    opened.insert(n, d.clone());
    Ok(d)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(ModelError::Device {
        device: DeviceSpec::Cuda(n).to_string(),
        reason: "this worldcompass was built without the `cuda` feature: build it with `just build-cuda` \
                 (or `cargo build --release --features cuda` where a CUDA toolkit is installed), as the README's \
                 section \"GPU\" says, or run with --device cpu"
            .to_string(),
    })
}

/// Whether this build can open CUDA devices at all.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_everywhere() {
        assert!(matches!(open(DeviceSpec::Cpu), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_cpu_only_build_names_the_feature_and_the_readme_section() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("`cuda` feature") && e.contains("\"GPU\"") && e.contains("--device cpu"), "{e}");
    }
}
