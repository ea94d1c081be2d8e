//! GGUF v2/v3 reader and writer (llama.cpp's `gguf.md`): header, metadata, tensor infos, and dequantisation
//! of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors to f32 at load. [`GgufFile::rewrite`] copies a file with
//! metadata changed and F32 tensors added, every other byte of metadata and tensor data copied verbatim.
//!
//! Block formats (ggml `ggml-common.h`), 32 values per block:
//! - Q8_0 (34 bytes): f16 scale `d`, 32 x i8 `q`; value = `q * d`.
//! - Q4_0 (18 bytes): f16 `d`, 16 bytes of nibbles; value = `(q - 8) * d`.
//! - Q4_1 (20 bytes): f16 `d`, f16 `m`, 16 bytes of nibbles; value = `q * d + m`.
//!
//! In the 4-bit formats byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble.
//! GGUF dimensions are listed fastest first (`ne[0]` = columns); torch shapes are the reverse.
//! Every read is bounds-checked: a truncated or corrupt file is a [`ModelError`] naming the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// `f32` or `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor storage types this reader knows by name (a subset of ggml's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 4-bit, scale only.
    Q4_0,
    /// 4-bit, scale and minimum.
    Q4_1,
    /// 8-bit, scale only.
    Q8_0,
    /// bfloat16.
    BF16,
    /// Any other type (not supported for loading): its ggml number.
    Other(u32),
}

impl GgmlType {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The name ggml uses (`Q4_1`), or `type N` for unsupported ones with known names.
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Other(n) => {
                let known = [
                    (6, "Q5_0"),
                    (7, "Q5_1"),
                    (9, "Q8_1"),
                    (10, "Q2_K"),
                    (11, "Q3_K"),
                    (12, "Q4_K"),
                    (13, "Q5_K"),
                    (14, "Q6_K"),
                    (15, "Q8_K"),
                    (24, "I8"),
                    (25, "I16"),
                    (26, "I32"),
                    (27, "I64"),
                    (28, "F64"),
                ];
                known.iter().find(|(k, _)| *k == n).map(|(_, s)| s.to_string()).unwrap_or(format!("type {n}"))
            }
        }
    }

    /// `(values per block, bytes per block)` of a supported type.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name (llama.cpp naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Torch-order shape (slowest dimension first).
    pub shape: Vec<i64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }
}

/// A memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    /// The file path (named in every error).
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Each metadata entry's raw bytes (key, type, value) in file order, for a verbatim copy.
    raw_metadata: Vec<(String, std::ops::Range<usize>)>,
    alignment: u64,
    data_start: u64,
    mmap: Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| ModelError::Truncated {
            path: self.path.to_path_buf(),
            what: format!("{what} needs bytes {}..{} of {}", self.pos, self.pos as u128 + n as u128, self.bytes.len()),
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{what}: length {n} exceeds the {left} bytes left"),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ModelError::corrupt(self.path, format!("{what}: string is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let what = format!("metadata `{key}`");
        Ok(match ty {
            0 => Value::U64(self.take(1, &what)?[0] as u64),
            1 => Value::I64(self.take(1, &what)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32(&what)? as u64),
            5 => Value::I64(self.u32(&what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(&what)?) as f64),
            7 => Value::Bool(self.take(1, &what)?[0] != 0),
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth > 0 {
                    return Err(ModelError::corrupt(self.path, format!("{what}: nested arrays are not supported")));
                }
                let elem = self.u32(&what)?;
                let n = self.len(&what)?;
                let mut out = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    out.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(out)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            other => return Err(ModelError::corrupt(self.path, format!("{what}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file (header, metadata, tensor infos); tensor data stays memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        // SAFETY: the file is only read; a concurrent writer could change the bytes under us, which at worst
        // gives wrong weights or a bounds-checked error, never undefined behaviour in this reader's logic.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        let mut c = Cursor { bytes: &mmap, pos: 0, path };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(ModelError::corrupt(path, format!("bad magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::corrupt(path, format!("GGUF version {version} (supported: 2, 3)")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let left = (mmap.len() - c.pos) as u64;
        if n_tensors > left / 8 || n_kv > left / 8 {
            return Err(ModelError::Truncated {
                path: path.to_path_buf(),
                what: format!("header announces {n_tensors} tensors and {n_kv} metadata entries in {left} bytes"),
            });
        }
        let mut metadata = BTreeMap::new();
        let mut raw_metadata = Vec::new();
        for _ in 0..n_kv {
            let start = c.pos;
            let key = c.string("metadata key")?;
            let ty = c.u32(&format!("type of metadata `{key}`"))?;
            let v = c.value(ty, &key, 0)?;
            raw_metadata.push((key.clone(), start..c.pos));
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let what = format!("tensor info `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims > 4 {
                return Err(ModelError::corrupt(path, format!("{what}: {n_dims} dimensions (at most 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&what)?;
                if d > i64::MAX as u64 {
                    return Err(ModelError::corrupt(path, format!("{what}: dimension {d} too large")));
                }
                dims.push(d as i64);
            }
            dims.reverse();
            let ggml_type = GgmlType::from_u32(c.u32(&what)?);
            let offset = c.u64(&what)?;
            tensors.push(TensorInfo { name, shape: dims, ggml_type, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(ModelError::corrupt(path, format!("general.alignment {alignment} is not a power of two")));
        }
        let pos = c.pos as u64;
        let data_start = pos.div_ceil(alignment) * alignment;
        let g = GgufFile { path: path.to_path_buf(), version, metadata, tensors, raw_metadata, alignment, data_start, mmap };
        for t in &g.tensors {
            g.tensor_bytes(t)?;
        }
        Ok(g)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned metadata value, or an error naming the key.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .ok_or_else(|| ModelError::config(&self.path, key, "missing metadata key"))?
            .as_u64()
            .ok_or_else(|| ModelError::config(&self.path, key, "expected an unsigned integer"))
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| ModelError::config(&self.path, key, "missing metadata key"))?
            .as_str()
            .ok_or_else(|| ModelError::config(&self.path, key, "expected a string"))
    }

    /// The tensor info of `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, bounds-checked against the file size.
    fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let (per_block, block_bytes) = t.ggml_type.block().ok_or_else(|| ModelError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type.name(),
        })?;
        let n = t.numel();
        if n % per_block != 0 {
            return Err(ModelError::corrupt(
                &self.path,
                format!("tensor `{}`: {n} values is not a multiple of the block size {per_block}", t.name),
            ));
        }
        let len = (n / per_block) as u128 * block_bytes as u128;
        let start = self.data_start as u128 + t.offset as u128;
        let end = start + len;
        if end > self.mmap.len() as u128 {
            return Err(ModelError::Truncated {
                path: self.path.clone(),
                what: format!("tensor `{}` needs bytes {start}..{end} of {}", t.name, self.mmap.len()),
            });
        }
        Ok(&self.mmap[start as usize..end as usize])
    }

    /// Dequantise a tensor to f32 values (row-major, torch-order shape `t.shape`).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        Ok(dequantize(t.ggml_type, bytes, t.numel()))
    }
}

/// A metadata value to write: the types [`GgufFile::rewrite`] writes.
#[derive(Debug, Clone, PartialEq)]
pub enum NewValue {
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 8.
    Str(String),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufFile {
    /// Stream a new file into `w`: this one with the metadata keys in `remove` and in `set` dropped, `set`'s
    /// entries appended, the tensors named in `drop_tensors` left out of the tensor list, and `add` (name, f32
    /// values, a 1-D tensor each) appended after the data. Every other metadata entry and every byte of the
    /// data section are copied verbatim, so kept tensors are byte-identical (their offsets do not change; a
    /// dropped tensor's bytes stay in the data section, unreferenced). Only the header is built in memory; the
    /// data section is copied from the memory map. Returns the bytes written.
    pub fn write_rewritten(
        &self,
        w: &mut dyn std::io::Write,
        remove: &[&str],
        set: &[(&str, NewValue)],
        drop_tensors: &[&str],
        add: &[(&str, Vec<f32>)],
    ) -> std::io::Result<u64> {
        let align = |n: usize| n.div_ceil(self.alignment as usize) * self.alignment as usize;
        let keep_kv: Vec<&(String, std::ops::Range<usize>)> = self
            .raw_metadata
            .iter()
            .filter(|(k, _)| !remove.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k))
            .collect();
        let keep_t: Vec<&TensorInfo> = self.tensors.iter().filter(|t| !drop_tensors.contains(&t.name.as_str())).collect();
        let data_len = self.mmap.len() - self.data_start as usize;
        let mut out = Vec::with_capacity(4096);
        out.extend(MAGIC);
        out.extend(self.version.to_le_bytes());
        out.extend(((keep_t.len() + add.len()) as u64).to_le_bytes());
        out.extend(((keep_kv.len() + set.len()) as u64).to_le_bytes());
        for (_, range) in &keep_kv {
            out.extend(&self.mmap[range.clone()]);
        }
        for (key, value) in set {
            put_str(&mut out, key);
            match value {
                NewValue::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                NewValue::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                NewValue::Str(v) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, v);
                }
            }
        }
        let ggml = |t: GgmlType| -> u32 {
            match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 8,
                GgmlType::BF16 => 30,
                GgmlType::Other(n) => n,
            }
        };
        for t in &keep_t {
            put_str(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(ggml(t.ggml_type).to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        let mut next = align(data_len) as u64;
        for (name, values) in add {
            put_str(&mut out, name);
            out.extend(1u32.to_le_bytes());
            out.extend((values.len() as u64).to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(next.to_le_bytes());
            next = align(next as usize + 4 * values.len()) as u64;
        }
        out.resize(align(out.len()), 0);
        w.write_all(&out)?;
        let data = &self.mmap[self.data_start as usize..];
        w.write_all(data)?;
        let mut written = data.len();
        for (_, values) in add {
            w.write_all(&vec![0u8; align(written) - written])?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_all(&bytes)?;
            written = align(written) + bytes.len();
        }
        Ok((out.len() + written) as u64)
    }

    /// The raw bytes of the tensor `name` (for byte-identity checks).
    pub fn raw_tensor(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).and_then(|t| self.tensor_bytes(t).ok())
    }
}

/// Dequantise `n` values of a supported type from `bytes` (whose length the caller checked).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = h(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = h(b, 0);
                let q = &b[2..18];
                out.extend(q.iter().map(|&x| ((x & 0x0f) as i32 - 8) as f32 * d));
                out.extend(q.iter().map(|&x| ((x >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = h(b, 0);
                let m = h(b, 2);
                let q = &b[4..20];
                out.extend(q.iter().map(|&x| (x & 0x0f) as f32 * d + m));
                out.extend(q.iter().map(|&x| (x >> 4) as f32 * d + m));
            }
        }
        GgmlType::Other(_) => unreachable!("tensor_bytes rejects unsupported types"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_blocks_by_the_formulas() {
        // Q4_1: d = 0.5, m = -1; byte j holds j in its low nibble and 15 - j in its high nibble.
        let mut b = Vec::new();
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let v = dequantize(GgmlType::Q4_1, &b, 32);
        for j in 0..16 {
            assert_eq!(v[j], j as f32 * 0.5 - 1.0);
            assert_eq!(v[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        // Q4_0: value = (q - 8) * d.
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend([0x8fu8; 16]);
        let v = dequantize(GgmlType::Q4_0, &b, 32);
        assert_eq!(v[0], 14.0);
        assert_eq!(v[16], 0.0);
        // Q8_0: value = q * d.
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 3.75);
    }
}
