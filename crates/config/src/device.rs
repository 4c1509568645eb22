//! Where a model runs: `cpu` or `cuda:N`.
//!
//! A [`DeviceSpec`] is what the user writes (`[run] device` in a pipeline
//! config, `--device` on a command, `WORLDCOMPASS_DEVICE` in a batch job's
//! environment); `wc_model::device::open` turns it into a candle device and
//! says clearly when this build cannot (no `cuda` feature, no GPU).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The host CPU (all threads of the rayon pool).
    #[default]
    Cpu,
    /// CUDA GPU number N (`cuda` alone is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    pub fn is_cpu(&self) -> bool {
        *self == DeviceSpec::Cpu
    }
}

/// A device name that is neither `cpu` nor `cuda[:N]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a device: use \"cpu\" or \"cuda:N\" (N the GPU's number, e.g. cuda:0)")]
pub struct DeviceParseError(pub String);

impl FromStr for DeviceSpec {
    type Err = DeviceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!(" CUDA:3 ".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "tpu", "metal"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.to_string().contains("cuda:N"), "{bad}: {e}");
        }
    }
}
