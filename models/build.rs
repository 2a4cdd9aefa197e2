//! Generates one burn module per ONNX net in this folder (burn-onnx), into
//! `$OUT_DIR/nets/<net>.rs`, with the weights written beside it as a burnpack
//! and embedded in the binary (`LoadStrategy::Embedded`), so no model path is
//! needed at run time. The ONNX files come from `convert.py` (see README.md).

use burn_onnx::{LoadStrategy, ModelGen};

/// File stems, equal to `Net::name()` in `src/lib.rs`.
const NETS: [&str; 6] = [
    "pose_detection",
    "pose_landmark_full",
    "face_detection_short_range",
    "face_landmark",
    "hand_recrop",
    "hand_landmark_full",
];

fn main() {
    let mut model_gen = ModelGen::new();
    for net in NETS {
        let path = format!("{net}.onnx");
        println!("cargo:rerun-if-changed={path}");
        model_gen.input(&path);
    }
    println!("cargo:rerun-if-changed=build.rs");
    model_gen
        .out_dir("nets/")
        .load_strategy(LoadStrategy::Embedded)
        .run_from_script();
}
