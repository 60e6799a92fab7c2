//! Property tests (proptest, bounded case counts so CI stays fast): hostile or random input to the
//! CIFAR-10 batch parser, the archive extraction and the public CPU functions gives a result or an
//! error, never a panic, and extraction never writes outside its target folder.
//!
//! Case counts: 48 batch-file layouts, 96 archives, 64 cases per CPU-function property (10 of
//! them), i.e. 784 cases per run; `PROPTEST_CASES` overrides them all.
mod common;

use common::tree;
use std::io::Write;
use std::path::Path;

use evenclass::data::{self, DownloadSpec, RECORD_BYTES};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- the CIFAR-10 batch parser ----

/// A batch file: a whole number of records (some with bad labels) plus a random tail.
fn batch_file() -> impl Strategy<Value = Vec<u8>> {
    (0usize..4, proptest::collection::vec(any::<u8>(), 0..40), 0usize..3100, any::<u8>()).prop_map(
        |(records, labels, tail, fill)| {
            let mut v = Vec::new();
            for r in 0..records {
                v.push(labels.get(r).copied().unwrap_or(r as u8 % 10));
                v.extend(std::iter::repeat_n(fill, RECORD_BYTES - 1));
            }
            v.extend(std::iter::repeat_n(fill, tail));
            v
        },
    )
}

proptest! {
    #![proptest_config(config(48))]
    #[test]
    fn batch_parser_never_panics(
        files in proptest::collection::vec(proptest::option::of(batch_file()), 6),
        meta in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        limit in proptest::option::of(0usize..8),
    ) {
        let t = tempfile::tempdir().unwrap();
        let names = data::TRAIN_FILES.iter().chain([&data::TEST_FILE]);
        for (name, bytes) in names.zip(&files) {
            if let Some(b) = bytes {
                std::fs::write(t.path().join(name), b).unwrap();
            }
        }
        if let Some(m) = &meta {
            std::fs::write(t.path().join(data::META_FILE), m).unwrap();
        }
        let opts = data::LoadOptions { train_limit: limit, test_limit: None };
        if let Ok((train, test)) = data::load_cifar10_with(t.path(), &opts) {
            // Whatever loads is consistent.
            prop_assert_eq!(train.images.len(), train.len() * data::IMAGE_BYTES);
            prop_assert!(train.labels.iter().chain(&test.labels).all(|&l| (l as usize) < train.num_classes()));
        }
        let _ = data::cifar::record_count(&t.path().join(data::TEST_FILE));
    }
}

// ---- archive extraction ----

#[derive(Clone, Debug)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
}

fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cifar-10-batches-bin/data_batch_1.bin".to_string()),
        Just("cifar-10-batches-bin/test_batch.bin".to_string()),
        Just("cifar-10-batches-bin/batches.meta.txt".to_string()),
        Just("cifar-10-batches-bin/".to_string()),
        Just("../escape".to_string()),
        Just("cifar-10-batches-bin/../../escape".to_string()),
        Just("/tmp/evenclass-robustness-absolute".to_string()),
        Just("./cifar-10-batches-bin/data_batch_2.bin".to_string()),
        Just("cifar-10-batches-bin\\..\\..\\escape".to_string()),
        "[a-z./]{1,30}",
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::File),
        1 => Just(Kind::Dir),
        1 => Just(Kind::Symlink),
        1 => Just(Kind::HardLink),
        1 => Just(Kind::CharDevice),
        1 => Just(Kind::BlockDevice),
        1 => Just(Kind::Fifo),
    ]
}

/// A gzipped tar of random entries (raw headers, so names and kinds are not sanitised), then
/// possibly truncated (before or after compression), bit-flipped, or given a lying size.
fn archive() -> impl Strategy<Value = Vec<u8>> {
    let entries = proptest::collection::vec((entry_name(), kind(), 0usize..(2 * RECORD_BYTES), any::<bool>()), 0..6);
    (
        entries,
        proptest::option::of(0.0f64..1.0),
        proptest::option::of(0.0f64..1.0),
        proptest::collection::vec(any::<(u16, u8)>(), 0..3),
    )
        .prop_map(|(entries, cut_tar, cut_gz, flips)| {
            let mut tar = Vec::new();
            for (name, kind, size, lie) in entries {
                let mut h = tar::Header::new_gnu();
                let raw = name.as_bytes();
                let n = raw.len().min(99);
                h.as_old_mut().name[..n].copy_from_slice(&raw[..n]);
                let (t, body) = match kind {
                    Kind::File => (tar::EntryType::Regular, size),
                    Kind::Dir => (tar::EntryType::Directory, 0),
                    Kind::Symlink => (tar::EntryType::Symlink, 0),
                    Kind::HardLink => (tar::EntryType::Link, 0),
                    Kind::CharDevice => (tar::EntryType::Char, 0),
                    Kind::BlockDevice => (tar::EntryType::Block, 0),
                    Kind::Fifo => (tar::EntryType::Fifo, 0),
                };
                h.set_entry_type(t);
                if matches!(kind, Kind::Symlink | Kind::HardLink) {
                    let _ = h.set_link_name("../../escape");
                }
                // A size that lies: the header claims more (or less) than the data that follow.
                let claimed = if lie { body * 2 + 7 } else { body };
                h.set_size(claimed as u64);
                h.set_mode(0o644);
                h.set_cksum();
                tar.extend_from_slice(h.as_bytes());
                tar.extend(std::iter::repeat_n(1u8, body));
                tar.extend(std::iter::repeat_n(0u8, (512 - body % 512) % 512));
            }
            tar.extend([0u8; 1024]);
            if let Some(f) = cut_tar {
                tar.truncate((tar.len() as f64 * f) as usize);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            let mut gz = gz.finish().unwrap();
            if let Some(f) = cut_gz {
                gz.truncate((gz.len() as f64 * f) as usize);
            }
            for (pos, bit) in flips {
                if !gz.is_empty() {
                    let i = pos as usize % gz.len();
                    gz[i] ^= 1 << (bit % 8);
                }
            }
            gz
        })
}

proptest! {
    #![proptest_config(config(96))]
    #[test]
    fn archive_extraction_never_panics_or_escapes(gz in archive()) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let target = root.join("target");
        std::fs::create_dir_all(&target).unwrap();
        let archive_path = t.path().join("a.tar.gz");
        std::fs::write(&archive_path, &gz).unwrap();
        let spec = DownloadSpec { expected_record_counts: [1; 6], progress: false, ..DownloadSpec::default() };
        let result = data::extract_archive(&archive_path, &target, &spec);
        // Nothing outside the target, and inside only regular files with the expected names.
        let outside: Vec<String> = tree(&root).into_iter().filter(|p| !p.starts_with("target")).collect();
        prop_assert!(outside.is_empty(), "written outside the target: {outside:?}");
        prop_assert!(!Path::new("/tmp/evenclass-robustness-absolute").exists());
        for name in tree(&target) {
            let p = target.join(&name);
            prop_assert!(p.symlink_metadata().unwrap().file_type().is_file(), "{name} is not a regular file");
            prop_assert!(data::download::ARCHIVE_FILES.contains(&name.as_str()), "unexpected file {name}");
        }
        if result.is_ok() {
            prop_assert!(data::cifar10_present(&target));
        }
    }
}

// ---- public CPU functions with random shapes and lengths ----

fn floats(max: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(prop_oneof![8 => -4.0f32..4.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)], 0..max)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn linear_random_shapes(b in 0usize..5, i in 0usize..6, o in 0usize..6, x in floats(40), w in floats(40), bias in floats(8), dy in floats(40)) {
        use evenclass::linear::{cpu, LinearShape};
        let s = LinearShape { batch: b, in_features: i, out_features: o };
        let _ = cpu::forward(&x, &w, &bias, s);
        let _ = cpu::backward(&x, &w, &dy, s);
    }

    #[test]
    fn pool_random_shapes(n in 0usize..3, c in 0usize..3, h in 0usize..7, w in 0usize..7, x in floats(120), arg in proptest::collection::vec(any::<u8>(), 0..40)) {
        use evenclass::pool::{cpu, PoolShape};
        let s = PoolShape { n, c, h, w };
        let _ = cpu::max_pool_forward(&x, s);
        let _ = cpu::max_pool_backward(&x, &arg, s);
        let _ = cpu::global_avg_pool_forward(&x, s);
        let _ = cpu::global_avg_pool_backward(&x, s);
    }

    #[test]
    fn relu_and_sgd_random_lengths(a in floats(20), b in floats(20), mut c in floats(20), mut d in floats(20), lr in -1.0f32..1.0) {
        use evenclass::{activation::cpu as act, optim::{cpu as opt, SgdConfig}};
        let _ = act::relu_forward(&a);
        let _ = act::relu_backward(&a, &b);
        let _ = act::relu_backward_inplace(&a, &mut c);
        let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
        let _ = opt::sgd_step(&mut c, &a, &mut d, &cfg, lr);
    }

    #[test]
    fn augment_random_indices(images in 0usize..3, idx in proptest::collection::vec(-2i32..4, 0..5), crops in proptest::collection::vec(any::<u8>(), 0..10), flips in proptest::collection::vec(any::<u8>(), 0..5), pad in 0usize..200, c in 0usize..6) {
        use evenclass::augment::{cpu, AugmentSpec};
        let spec = AugmentSpec { c, h: 4, w: 4, pad, mean: [0.5; 4], std: [0.25, 0.25, 0.25, 0.0] };
        let data = vec![7u8; images * c.max(1) * 16];
        let _ = cpu::train_batch(&data, &idx, &crops, &flips, &spec);
        let _ = cpu::eval_batch(&data, &idx, &spec);
    }

    #[test]
    fn cross_entropy_and_softmax_random_shapes(n in 0usize..5, c in 0usize..5, z in floats(30), t in proptest::collection::vec(-3i32..7, 0..6), w in floats(6), smooth in -0.5f32..1.5) {
        use evenclass::cross_entropy::{cpu, Options, Reduction};
        use ndarray::{ArrayView1, ArrayView2};
        let Ok(logits) = ArrayView2::from_shape((n, c), &z[..z.len().min(n * c)]) else { return Ok(()) };
        let opts = Options { ignore_index: Some(-100), label_smoothing: smooth, reduction: Reduction::Mean };
        let _ = cpu::forward_backward(logits, ArrayView1::from(&t[..]), Some(ArrayView1::from(&w[..])), &opts);
        let _ = cpu::forward_backward(logits, ArrayView1::from(&t[..]), None, &opts);
        let y = evenclass::softmax::cpu::forward(logits, evenclass::softmax::Kind::Softmax);
        let _ = evenclass::softmax::cpu::backward(y.view(), logits, evenclass::softmax::Kind::LogSoftmax);
    }

    #[test]
    fn confusion_random_labels(classes in 0usize..5, p in proptest::collection::vec(-2i32..6, 0..8), t in proptest::collection::vec(-2i32..6, 0..8)) {
        use evenclass::confusion::{cpu, ConfusionMatrix};
        if let Ok(mut m) = ConfusionMatrix::new(classes) {
            let _ = cpu::count_labels(&p, &t, &mut m, Some(-1));
            let _ = m.metrics();
        }
    }

    #[test]
    fn class_weights_random_recall(r in proptest::collection::vec(prop_oneof![-0.5f64..1.5, Just(f64::NAN)], 0..12), p in -10.0f64..10.0, min in -0.5f64..1.5) {
        let _ = evenclass::cross_entropy::weights_from_recall(&r, p, min);
    }

    #[test]
    fn conv_shapes_random(input in proptest::array::uniform4(0usize..9), filter in proptest::array::uniform4(0usize..9), stride in 0usize..4, pad in 0usize..5) {
        use evenclass::conv::{Conv2dOpts, Conv2dShape};
        let _ = Conv2dShape::new(input, filter, Conv2dOpts::square(stride, pad));
    }

    #[test]
    fn dataset_subsets_random(n in 0usize..6, a in 0usize..9, b in 0usize..9) {
        let names: Vec<String> = (0..10).map(|k| k.to_string()).collect();
        let d = data::Dataset::new(vec![0; n * data::IMAGE_BYTES], vec![0; n], names, "t").unwrap();
        let _ = d.subset(a..b);
        let _ = d.subset(a..=b);
        let _ = d.get_image(a);
        let _ = d.first(a);
    }

    #[test]
    fn memory_estimate_never_overflows(w in 0usize..usize::MAX, d in 0usize..64, c in 0usize..1000, b in 0usize..usize::MAX, imgs in 0usize..usize::MAX) {
        use evenclass::train::{MemoryEstimate, ModelConfig};
        if let Ok(e) = MemoryEstimate::new(ModelConfig { width: w, depth: d, classes: c }, b, imgs) {
            prop_assert!(e.total() >= e.parameters);
        }
    }
}
