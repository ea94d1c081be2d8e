//! Writing and reading named tensors as safetensors files, with the `{"format": "pt"}` metadata HF
//! transformers requires of a checkpoint, atomically (temporary file, fsync, rename).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

/// One tensor's bytes in safetensors layout (row-major, little-endian).
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn bytes_of(t: &Tensor, path: &Path, name: &str) -> Result<Bytes> {
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        other => {
            return Err(TrainError::Checkpoint { path: path.into(), message: format!("tensor `{name}`: cannot store {other:?}") })
        }
    };
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Write `tensors` (name, tensor) to `path` atomically, with HF's `format = pt` metadata.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        owned.push((name.clone(), bytes_of(t, path, name)?));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views: Vec<(String, &Bytes)> = owned.iter().map(|(n, b)| (n.clone(), b)).collect();
    // Through the project's atomic helper: the temporary file is removed if serializing fails (a full disk).
    longrope_core::files::write_atomic_path(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(meta), tmp)
            .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })
    })
}

/// Read every tensor of a safetensors file (CPU, stored dtype), by name.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let list = Tensor::read_safetensors(path)
        .map_err(|e| TrainError::Checkpoint { path: path.into(), message: format!("cannot read tensors: {e}") })?;
    Ok(list.into_iter().collect())
}
