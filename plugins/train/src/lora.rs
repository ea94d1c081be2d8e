//! LoRA (Hu et al., arXiv 2106.09685) on the model's own projections, as PEFT does it: `A` (`[r, in]`)
//! initialised `U(-1/sqrt(in), 1/sqrt(in))` (PEFT's `kaiming_uniform_(a = sqrt(5))`), `B` (`[out, r]`) zero, the
//! adapter term scaled by `alpha / r`, optional dropout on the adapter's input. Adapters are registered in the
//! model's `VarStore` as `{module}.lora_A.weight` / `{module}.lora_B.weight` (PEFT's key names without its
//! `base_model.model.` prefix) and attached to the projections through [`Decoder::linears_mut`]; the model's
//! code is unchanged. [`merge`] folds them into the weights for export.

use std::collections::BTreeMap;

use longrope_core::model::Decoder;
use longrope_core::nn::LoraAdapter;
use tch::{Kind, Tensor};

use crate::config::LoraSection;
use crate::error::{Result, TrainError};

/// The `nn::Path` of a dotted HF module name (`model.layers.0.self_attn.q_proj`).
fn module_path<'a>(vs: &'a tch::nn::VarStore, dotted: &str) -> tch::nn::Path<'a> {
    dotted.split('.').fold(vs.root(), |p, part| p / part)
}

/// Attach adapters to every projection whose last name component is in `config.targets`; returns the adapted
/// module names, sorted. A target that names no projection is an error listing the projections there are.
pub fn attach(dec: &mut dyn Decoder, config: &LoraSection, seed: u64, origin: &str) -> Result<Vec<String>> {
    let (device, kind) = (dec.device(), dec.dtype());
    let mut chosen: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut known: Vec<String> = Vec::new();
    for (name, lin) in dec.linears_mut() {
        let short = name.rsplit('.').next().unwrap_or(&name).to_string();
        if !known.contains(&short) {
            known.push(short.clone());
        }
        if config.targets.contains(&short) {
            chosen.insert(name, lin.shape());
        }
    }
    for t in &config.targets {
        if !known.contains(t) {
            return Err(TrainError::config(origin, "lora.targets", format!("`{t}` names no projection of this model; it has: {}", known.join(", "))));
        }
    }
    tch::manual_seed(seed as i64);
    let r = config.rank as i64;
    let mut adapters: BTreeMap<String, (Tensor, Tensor)> = BTreeMap::new();
    {
        let vs = dec.var_store();
        for (name, &(out, inp)) in &chosen {
            if r > out.min(inp) {
                return Err(TrainError::config(origin, "lora.rank", format!("{r} exceeds the smaller side of `{name}` ({out} x {inp})")));
            }
            let bound = 1.0 / (inp as f64).sqrt();
            let a = Tensor::empty([r, inp], (Kind::Float, device)).uniform_(-bound, bound).to_kind(kind);
            let b = Tensor::zeros([out, r], (kind, device));
            let p = module_path(vs, name);
            let a = (&p / "lora_A").add("weight", a, true);
            let b = (&p / "lora_B").add("weight", b, true);
            adapters.insert(name.clone(), (a, b));
        }
    }
    let scaling = config.alpha / config.rank as f64;
    for (name, lin) in dec.linears_mut() {
        if let Some((a, b)) = adapters.remove(&name) {
            lin.adapter = Some(LoraAdapter { a, b, scaling, dropout: config.dropout, training: true });
        }
    }
    Ok(chosen.into_keys().collect())
}

/// Switch adapter dropout on (training) or off (evaluation).
pub fn set_training(dec: &mut dyn Decoder, training: bool) {
    for (_, lin) in dec.linears_mut() {
        if let Some(a) = &mut lin.adapter {
            a.training = training;
        }
    }
}

/// Fold every adapter into its projection's weight (`W += alpha/r · B A`) and drop it.
pub fn merge(dec: &mut dyn Decoder) {
    for (_, lin) in dec.linears_mut() {
        lin.merge_adapter();
    }
}

/// Whether a `VarStore` name is an adapter weight.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}
