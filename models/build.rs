// Placeholder until the converter lands: generates the burn code for each ONNX
// model in this folder (see README.md).
fn main() {}
