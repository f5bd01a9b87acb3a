//! I/O binding: a session's inputs and outputs in buffers allocated once per set of shapes
//! ([`BindingSpec`]) and kept, so that repeated runs (the UNet's steps) reuse them and, on a GPU,
//! stay on the device: an input is copied to the device only when it is written (the text
//! embeddings once per prompt, the latents once per step) and an output only when it is read.
//! On the CPU the bound tensors are host memory, written and read in place: the same code path
//! without copies. Fixed buffers are also what a CUDA graph needs (`super::graphs`).

use half::f16;
use ndarray::ArrayViewD;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, TensorElementType};

use super::signature::Elem;
use super::tensors::{fill_float, set_timestep};

/// Where a session's bound tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Host memory: the CPU provider.
    Host,
    /// Device memory of this CUDA device: the CUDA and TensorRT providers.
    Cuda(i32),
}

/// One bound tensor: name, element type and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: &str, elem: Elem, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            elem,
            shape: shape.to_vec(),
        }
    }
}

/// The tensors of one binding, the key its buffers are kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingSpec {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl BindingSpec {
    /// `sample 2x4x8x8, timestep scalar, ... -> out_sample 2x4x8x8`, for log lines.
    pub fn describe(&self) -> String {
        let list = |v: &[TensorSpec]| {
            v.iter()
                .map(|t| {
                    let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
                    let dims = if dims.is_empty() {
                        "scalar".to_string()
                    } else {
                        dims.join("x")
                    };
                    format!("{} {dims}", t.name)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{} -> {}", list(&self.inputs), list(&self.outputs))
    }
}

/// A tensor where the session reads or writes it, and its host copy when that is a device.
struct Slot {
    spec: TensorSpec,
    bound: DynTensor,
    host: Option<DynTensor>,
}

/// The buffers of one [`BindingSpec`], bound to one session.
pub struct Bound {
    pub spec: BindingSpec,
    binding: IoBinding,
    inputs: Vec<Slot>,
    outputs: Vec<Slot>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("spec", &self.spec).finish()
    }
}

impl Bound {
    /// Allocates every tensor of `spec` where `placement` says and binds the outputs.
    pub(crate) fn new(
        session: &Session,
        placement: Placement,
        spec: BindingSpec,
    ) -> ort::Result<Bound> {
        let device = match placement {
            Placement::Host => None,
            Placement::Cuda(id) => Some(Allocator::new(
                session,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?),
        };
        let host = Allocator::default();
        let slot = |t: &TensorSpec| -> ort::Result<Slot> {
            let ty = element_type(t.elem)?;
            Ok(Slot {
                bound: DynTensor::new(device.as_ref().unwrap_or(&host), ty, t.shape.clone())?,
                host: match device {
                    Some(_) => Some(DynTensor::new(&host, ty, t.shape.clone())?),
                    None => None,
                },
                spec: t.clone(),
            })
        };
        let inputs = spec.inputs.iter().map(slot).collect::<ort::Result<_>>()?;
        let mut outputs: Vec<Slot> = spec.outputs.iter().map(slot).collect::<ort::Result<_>>()?;
        let mut binding = session.create_binding()?;
        for o in &mut outputs {
            binding.bind_output(o.spec.name.clone(), &mut o.bound)?;
        }
        Ok(Bound {
            spec,
            binding,
            inputs,
            outputs,
        })
    }

    pub(crate) fn binding(&self) -> &IoBinding {
        &self.binding
    }

    /// Writes input `name` through `fill` (given a host tensor of the input's type and shape),
    /// copies it to the device when it lives there, and binds it.
    pub fn write(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut DynTensor) -> ort::Result<()>,
    ) -> ort::Result<()> {
        let slot = self
            .inputs
            .iter_mut()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| ort::Error::new(format!("no bound input '{name}'")))?;
        match &mut slot.host {
            Some(host) => {
                fill(host)?;
                host.copy_into(&mut slot.bound)?;
            }
            None => fill(&mut slot.bound)?,
        }
        self.binding.bind_input(name, &slot.bound)
    }

    /// Float data into input `name` (float16 for a float16 input), `parts` one after the other.
    pub fn write_float(&mut self, name: &str, parts: &[&[f32]]) -> ort::Result<()> {
        let elem = self.input_elem(name)?;
        self.write(name, |t| fill_float(t, parts, elem))
    }

    /// Sets every element of input `name` (the UNet's timestep) to `t`.
    pub fn write_timestep(&mut self, name: &str, t: f32) -> ort::Result<()> {
        let elem = self.input_elem(name)?;
        self.write(name, |tensor| set_timestep(tensor, t, elem))
    }

    fn input_elem(&self, name: &str) -> ort::Result<Elem> {
        self.inputs
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| s.spec.elem)
            .ok_or_else(|| ort::Error::new(format!("no bound input '{name}'")))
    }

    /// Hands output `name`, as float32 (float16 widened), to `read`; copied from the device
    /// first when it lives there.
    pub fn read_float<R>(
        &mut self,
        name: &str,
        read: impl FnOnce(ArrayViewD<'_, f32>) -> R,
    ) -> ort::Result<R> {
        let slot = self
            .outputs
            .iter_mut()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| ort::Error::new(format!("no bound output '{name}'")))?;
        let host = match &mut slot.host {
            Some(host) => {
                slot.bound.copy_into(&mut *host)?;
                &*host
            }
            None => &slot.bound,
        };
        match slot.spec.elem {
            Elem::F16 => {
                let wide = host.try_extract_array::<f16>()?.mapv(f16::to_f32);
                Ok(read(wide.view()))
            }
            _ => Ok(read(host.try_extract_array::<f32>()?)),
        }
    }
}

fn element_type(elem: Elem) -> ort::Result<TensorElementType> {
    Ok(match elem {
        Elem::F32 => TensorElementType::Float32,
        Elem::F16 => TensorElementType::Float16,
        Elem::I64 => TensorElementType::Int64,
        Elem::I32 => TensorElementType::Int32,
        Elem::Other => return Err(ort::Error::new("cannot bind a tensor of this element type")),
    })
}
