# Sourced by the GPU scripts (gpu-check.sh, scale-study.sh), not run.
#
# cuda_libraries BIN: put the CUDA 13 libraries a `cuda` build of
# worldcompass needs (libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libcudart.so.13, libnvrtc.so.13) on LD_LIBRARY_PATH: the system's, or
# those of the Python environment's nvidia-* wheels (PyTorch's); libcuda.so.1
# is the driver's. Fails, naming what is missing, when BIN still misses one.
cuda_libraries() {
  local bin=$1 libdirs
  libdirs=$(python3 - <<'PY' 2>/dev/null || true
import glob, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({p.rsplit("/", 1)[0] for r in roots for p in glob.glob(r + "/nvidia/**/lib/lib*.so*", recursive=True)})
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH="${libdirs:+$libdirs:}/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  if ldd "$bin" | grep "not found"; then
    echo "$bin misses the libraries above; put their folders on LD_LIBRARY_PATH" >&2
    return 1
  fi
}
