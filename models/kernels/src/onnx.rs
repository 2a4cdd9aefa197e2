//! A minimal reader of ONNX model files: the graph's nodes, attributes,
//! initializers (float32 and int64) and input/output names and shapes. Only
//! what the converted Holistic nets use; anything else is skipped or reported.
//!
//! ONNX is protobuf; the wire format is decoded by hand here (a few field
//! numbers from `onnx.proto3`) rather than pulling a protobuf code generator
//! into the build.

use std::collections::HashMap;

/// A malformed or unsupported model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxError(pub String);

impl std::fmt::Display for OnnxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "onnx: {}", self.0)
    }
}

impl std::error::Error for OnnxError {}

fn err<T>(message: impl Into<String>) -> Result<T, OnnxError> {
    Err(OnnxError(message.into()))
}

/// A constant tensor (an initializer or a tensor attribute).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: TensorData,
}

/// The element types the nets use.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Float(f32),
    Int(i64),
    String(String),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Tensor(Tensor),
}

/// One graph node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op_type: String,
    pub name: String,
    /// Input value names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: HashMap<String, Attribute>,
}

impl Node {
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attributes.get(name) {
            Some(Attribute::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attributes.get(name) {
            Some(Attribute::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn float(&self, name: &str) -> Option<f32> {
        match self.attributes.get(name) {
            Some(Attribute::Float(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match self.attributes.get(name) {
            Some(Attribute::String(v)) => Some(v),
            _ => None,
        }
    }
}

/// A graph input or output: its name and static shape (0 for a dimension
/// without a fixed size).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The main graph of a model file, nodes in topological order (as ONNX
/// requires).
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: HashMap<String, Tensor>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    /// Parses a serialized `ModelProto` and returns its graph.
    pub fn parse(bytes: &[u8]) -> Result<Graph, OnnxError> {
        let mut graph = None;
        let mut r = Reader::new(bytes);
        while let Some((field, value)) = r.next()? {
            if field == 7 {
                graph = Some(parse_graph(value.bytes()?)?);
            }
        }
        let mut graph = graph.ok_or(OnnxError("no graph in model".into()))?;
        let inits = &graph.initializers;
        graph.inputs.retain(|i| !inits.contains_key(&i.name));
        Ok(graph)
    }
}

/// One decoded protobuf field value.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    fn bytes(self) -> Result<&'a [u8], OnnxError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => err("expected a length-delimited field"),
        }
    }

    fn string(self) -> Result<String, OnnxError> {
        String::from_utf8(self.bytes()?.to_vec()).or(err("string is not UTF-8"))
    }

    fn varint(self) -> Result<u64, OnnxError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => err("expected a varint field"),
        }
    }

    fn f32(self) -> Result<f32, OnnxError> {
        match self {
            Value::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => err("expected a 32-bit field"),
        }
    }

    /// A repeated varint field's values, packed or not.
    fn push_varints(self, out: &mut Vec<i64>) -> Result<(), OnnxError> {
        match self {
            Value::Varint(v) => out.push(v as i64),
            Value::Bytes(b) => {
                let mut r = Reader::new(b);
                while !r.at_end() {
                    out.push(r.varint()? as i64);
                }
            }
            _ => return err("expected varints"),
        }
        Ok(())
    }

    /// A repeated float field's values, packed or not.
    fn push_floats(self, out: &mut Vec<f32>) -> Result<(), OnnxError> {
        match self {
            Value::Fixed32(v) => out.push(f32::from_bits(v)),
            Value::Bytes(b) => {
                if b.len() % 4 != 0 {
                    return err("packed floats not a multiple of 4 bytes");
                }
                out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            _ => return err("expected floats"),
        }
        Ok(())
    }
}

/// Protobuf wire-format reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return err("truncated varint");
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return err("field runs past the end of its message");
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value)`, `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, OnnxError> {
        if self.at_end() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).or(err("length too large"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            }
            wire => return err(format!("unsupported wire type {wire}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn parse_graph(bytes: &[u8]) -> Result<Graph, OnnxError> {
    let mut graph = Graph {
        nodes: Vec::new(),
        initializers: HashMap::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match field {
            1 => graph.nodes.push(parse_node(value.bytes()?)?),
            5 => {
                let (name, tensor) = parse_tensor(value.bytes()?)?;
                graph.initializers.insert(name, tensor);
            }
            11 => graph.inputs.push(parse_value_info(value.bytes()?)?),
            12 => graph.outputs.push(parse_value_info(value.bytes()?)?),
            _ => {}
        }
    }
    Ok(graph)
}

fn parse_node(bytes: &[u8]) -> Result<Node, OnnxError> {
    let mut node = Node {
        op_type: String::new(),
        name: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        attributes: HashMap::new(),
    };
    let mut domain = String::new();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match field {
            1 => node.inputs.push(value.string()?),
            2 => node.outputs.push(value.string()?),
            3 => node.name = value.string()?,
            4 => node.op_type = value.string()?,
            5 => {
                let (name, attribute) = parse_attribute(value.bytes()?)?;
                node.attributes.insert(name, attribute);
            }
            7 => domain = value.string()?,
            _ => {}
        }
    }
    if !domain.is_empty() && domain != "ai.onnx" {
        return err(format!("node {}: operator domain {domain:?}", node.name));
    }
    Ok(node)
}

fn parse_attribute(bytes: &[u8]) -> Result<(String, Attribute), OnnxError> {
    let (mut name, mut kind) = (String::new(), 0u64);
    let (mut f, mut i, mut s, mut t) = (None, None, None, None);
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match field {
            1 => name = value.string()?,
            2 => f = Some(value.f32()?),
            3 => i = Some(value.varint()? as i64),
            4 => s = Some(value.string()?),
            5 => t = Some(parse_tensor(value.bytes()?)?.1),
            7 => value.push_floats(&mut floats)?,
            8 => value.push_varints(&mut ints)?,
            20 => kind = value.varint()?,
            _ => {}
        }
    }
    // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4,
    // FLOATS 6, INTS 7.
    let attribute = match kind {
        1 => Attribute::Float(f.unwrap_or(0.0)),
        2 => Attribute::Int(i.unwrap_or(0)),
        3 => Attribute::String(s.unwrap_or_default()),
        4 => Attribute::Tensor(t.ok_or(OnnxError(format!("attribute {name}: no tensor")))?),
        6 => Attribute::Floats(floats),
        7 => Attribute::Ints(ints),
        other => return err(format!("attribute {name}: unsupported type {other}")),
    };
    Ok((name, attribute))
}

fn parse_tensor(bytes: &[u8]) -> Result<(String, Tensor), OnnxError> {
    let (mut name, mut data_type) = (String::new(), 0u64);
    let mut dims = Vec::new();
    let (mut floats, mut int64s, mut raw) = (Vec::new(), Vec::new(), None);
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match field {
            1 => value.push_varints(&mut dims)?,
            2 => data_type = value.varint()?,
            4 => value.push_floats(&mut floats)?,
            7 => value.push_varints(&mut int64s)?,
            8 => name = value.string()?,
            9 => raw = Some(value.bytes()?),
            13 => return err(format!("tensor {name}: external data")),
            _ => {}
        }
    }
    let dims: Vec<usize> = dims
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<_, _>>()
        .or(err(format!("tensor {name}: negative dimension")))?;
    let len: usize = dims.iter().product();
    // TensorProto.DataType: FLOAT 1, INT64 7; raw data is little-endian.
    let data = match (data_type, raw) {
        (1, Some(raw)) => {
            let mut v = Vec::new();
            Value::Bytes(raw).push_floats(&mut v)?;
            TensorData::F32(v)
        }
        (1, None) => TensorData::F32(floats),
        (7, Some(raw)) => {
            if raw.len() % 8 != 0 {
                return err(format!("tensor {name}: raw int64 data"));
            }
            TensorData::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            )
        }
        (7, None) => TensorData::I64(int64s),
        (other, _) => return err(format!("tensor {name}: unsupported data type {other}")),
    };
    let got = match &data {
        TensorData::F32(v) => v.len(),
        TensorData::I64(v) => v.len(),
    };
    if got != len {
        return err(format!("tensor {name}: {got} values for shape {dims:?}"));
    }
    Ok((name, Tensor { dims, data }))
}

fn parse_value_info(bytes: &[u8]) -> Result<ValueInfo, OnnxError> {
    let mut info = ValueInfo {
        name: String::new(),
        shape: Vec::new(),
    };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match field {
            1 => info.name = value.string()?,
            // TypeProto.tensor_type (1) -> TypeProto.Tensor.shape (2) ->
            // TensorShapeProto.dim (1) -> Dimension.dim_value (1).
            2 => {
                let mut t = Reader::new(value.bytes()?);
                while let Some((f, v)) = t.next()? {
                    if f != 1 {
                        continue;
                    }
                    let mut tt = Reader::new(v.bytes()?);
                    while let Some((f, v)) = tt.next()? {
                        if f != 2 {
                            continue;
                        }
                        let mut shape = Reader::new(v.bytes()?);
                        while let Some((f, v)) = shape.next()? {
                            if f != 1 {
                                continue;
                            }
                            let mut dim = Reader::new(v.bytes()?);
                            let mut size = 0;
                            while let Some((f, v)) = dim.next()? {
                                if f == 1 {
                                    size = usize::try_from(v.varint()?).unwrap_or(0);
                                }
                            }
                            info.shape.push(size);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_garbage_bytes_are_errors_not_panics() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../hand_recrop.onnx")).unwrap();
        assert!(Graph::parse(&bytes).is_ok());
        for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(Graph::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Graph::parse(&[0xff; 32]).is_err());
    }

    #[test]
    fn reads_the_converted_hand_recrop_graph() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../hand_recrop.onnx")).unwrap();
        let g = Graph::parse(&bytes).unwrap();
        assert_eq!(g.inputs.len(), 1);
        // The batch is free (`N`): read as 0.
        assert_eq!(g.inputs[0].shape, vec![0, 3, 256, 256]);
        assert_eq!(g.outputs[0].name, "output_crop");
        assert_eq!(g.outputs[0].shape, vec![0, 4, 1, 1]);
        let convs = g.nodes.iter().filter(|n| n.op_type == "Conv").count();
        assert_eq!(convs, 33);
        let first = &g.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
        assert_eq!(first.ints("strides"), Some(&[2, 2][..]));
        let w = &g.initializers[&first.inputs[1]];
        assert_eq!(w.dims, vec![8, 3, 3, 3]);
        assert_eq!(w.as_f32().unwrap().len(), 8 * 3 * 3 * 3);
    }
}
