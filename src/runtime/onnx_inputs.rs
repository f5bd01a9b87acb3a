//! The graph inputs and outputs of an ONNX file (names, element types, dimensions), read from its protobuf
//! without ONNX Runtime: a TensorRT optimization profile must name the inputs and their shapes
//! before the session that would report them is created. The weights are skipped, not read
//! (a seek per initializer), so a multi-gigabyte UNet costs a few reads.
//!
//! The protobuf fields read (onnx.proto): `ModelProto.graph` (7); `GraphProto.input` (11), `.output` (12);
//! `ValueInfoProto.name` (1), `.type` (2); `TypeProto.tensor_type` (1);
//! `TypeProto.Tensor.elem_type` (1), `.shape` (2); `TensorShapeProto.dim` (1);
//! `Dimension.dim_value` (1), `.dim_param` (2).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::signature::{Elem, Port};

/// Why the inputs could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot read the graph inputs: {problem}", file.display())]
pub struct InputsError {
    pub file: PathBuf,
    pub problem: String,
}

/// A graph's inputs and outputs, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphPorts {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

/// The graph inputs and outputs of `file`; dynamic dimensions are -1. Ports that are not
/// tensors get [`Elem::Other`] and no dimensions.
pub fn read(file: &Path) -> Result<GraphPorts, InputsError> {
    let err = |problem: String| InputsError {
        file: file.to_path_buf(),
        problem,
    };
    let f = File::open(file).map_err(|e| err(e.to_string()))?;
    let len = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut r = Reader {
        inner: BufReader::new(f),
        pos: 0,
    };
    let mut ports = GraphPorts::default();
    let mut found_graph = false;
    while r.pos < len {
        let (field, wire) = r.key().map_err(|e| err(e.to_string()))?;
        if field == 7 && wire == 2 {
            found_graph = true;
            let end = r.len_end().map_err(|e| err(e.to_string()))?;
            read_graph(&mut r, end, &mut ports).map_err(|e| err(e.to_string()))?;
        } else {
            r.skip(wire).map_err(|e| err(e.to_string()))?;
        }
    }
    if !found_graph {
        return Err(err("no graph in the file".into()));
    }
    Ok(ports)
}

fn read_graph(r: &mut Reader, end: u64, ports: &mut GraphPorts) -> io::Result<()> {
    while r.pos < end {
        let (field, wire) = r.key()?;
        if (field == 11 || field == 12) && wire == 2 {
            let n = r.varint()? as usize;
            let bytes = r.bytes(n)?;
            let port = value_info(&bytes)?;
            if field == 11 {
                ports.inputs.push(port);
            } else {
                ports.outputs.push(port);
            }
        } else {
            r.skip(wire)?;
        }
    }
    Ok(())
}

/// `ValueInfoProto` from its bytes.
fn value_info(bytes: &[u8]) -> io::Result<Port> {
    let mut port = Port {
        name: String::new(),
        elem: Elem::Other,
        dims: Vec::new(),
    };
    for (field, value) in fields(bytes)? {
        match (field, value) {
            (1, Field::Bytes(b)) => port.name = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(ty)) => {
                for (f, v) in fields(ty)? {
                    if let (1, Field::Bytes(tensor)) = (f, v) {
                        tensor_type(tensor, &mut port)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(port)
}

/// `TypeProto.Tensor`: the element type and the shape.
fn tensor_type(bytes: &[u8], port: &mut Port) -> io::Result<()> {
    for (field, value) in fields(bytes)? {
        match (field, value) {
            (1, Field::Varint(t)) => {
                port.elem = match t {
                    1 => Elem::F32,
                    10 => Elem::F16,
                    7 => Elem::I64,
                    6 => Elem::I32,
                    _ => Elem::Other,
                }
            }
            (2, Field::Bytes(shape)) => {
                for (f, v) in fields(shape)? {
                    if let (1, Field::Bytes(dim)) = (f, v) {
                        let mut d = -1;
                        for (df, dv) in fields(dim)? {
                            if let (1, Field::Varint(n)) = (df, dv) {
                                d = n as i64;
                            }
                        }
                        port.dims.push(d);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a small message held in memory.
fn fields(mut b: &[u8]) -> io::Result<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = slice_varint(&mut b)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Field::Varint(slice_varint(&mut b)?),
            2 => {
                let n = slice_varint(&mut b)? as usize;
                if n > b.len() {
                    return Err(bad("a field runs past its message"));
                }
                let (v, rest) = b.split_at(n);
                b = rest;
                Field::Bytes(v)
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if n > b.len() {
                    return Err(bad("a field runs past its message"));
                }
                b = &b[n..];
                Field::Fixed
            }
            _ => return Err(bad("unsupported protobuf wire type")),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn slice_varint(b: &mut &[u8]) -> io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or_else(|| bad("truncated varint"))?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A protobuf stream read from a file, large fields skipped by seeking.
struct Reader {
    inner: BufReader<File>,
    pos: u64,
}

impl Reader {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.inner.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn key(&mut self) -> io::Result<(u64, u64)> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }

    /// Reads a length and returns where the field ends.
    fn len_end(&mut self) -> io::Result<u64> {
        let n = self.varint()?;
        Ok(self.pos + n)
    }

    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if n > 1 << 24 {
            return Err(bad("a graph input description over 16 MiB"));
        }
        let mut v = vec![0u8; n];
        self.inner.read_exact(&mut v)?;
        self.pos += n as u64;
        Ok(v)
    }

    fn skip(&mut self, wire: u64) -> io::Result<()> {
        let n = match wire {
            0 => return self.varint().map(drop),
            1 => 8,
            5 => 4,
            2 => self.varint()?,
            _ => return Err(bad("unsupported protobuf wire type")),
        };
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }
}
