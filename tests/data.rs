//! The dataset module: CIFAR-10 loader on generated files (valid and corrupt), subsets, data-dir
//! resolution, the synthetic set, the download against a local HTTP server (success, wrong MD5,
//! hostile archives, truncated transfer, unreachable server), and the real data when present.
mod common;

use common::tree;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use evenclass::data::{
    self, download::ARCHIVE_FILES, resolve_data_dir_from, DataError, DataSource, Dataset, DirSource, DownloadSpec,
    LoadOptions, IMAGE_BYTES, NUM_CLASSES, RECORD_BYTES, TEST_FILE, TRAIN_FILES,
};
use md5::{Digest, Md5};

// ---------------------------------------------------------------------------------------------
// Generated CIFAR-10 files

/// Image byte `j` of record `r` of file `f`: distinct enough to catch misplaced bytes.
fn pixel(f: usize, r: usize, j: usize) -> u8 {
    (f * 37 + r * 11 + j * 3 + j / 1024) as u8
}

/// Records of file `f` (0..5 train, 5 test): labels `(f + r) % 10`.
fn batch_bytes(f: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * RECORD_BYTES);
    for r in 0..n {
        out.push(((f + r) % NUM_CLASSES) as u8);
        out.extend((0..IMAGE_BYTES).map(|j| pixel(f, r, j)));
    }
    out
}

fn all_files() -> impl Iterator<Item = &'static str> {
    TRAIN_FILES.into_iter().chain([TEST_FILE])
}

/// A directory with `n` records in each of the six files.
fn write_dataset(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, name) in all_files().enumerate() {
        std::fs::write(dir.join(name), batch_bytes(f, n)).unwrap();
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn loads_generated_files() {
    let t = tmp();
    write_dataset(t.path(), 7);
    let (train, test) = data::load_cifar10(t.path()).unwrap();
    assert_eq!((train.len(), test.len()), (35, 7));
    assert_eq!(train.images.len(), 35 * IMAGE_BYTES);
    assert_eq!(train.class_names, data::CIFAR10_CLASS_NAMES.map(String::from).to_vec());
    assert_eq!(train.name, "CIFAR-10 train");
    assert_eq!(test.name, "CIFAR-10 test");
    // Record 3 of data_batch_2 is training image 7 + 3.
    assert_eq!(train.labels[10], 4); // (1 + 3) % 10
    let img = train.image(10);
    assert!(img.iter().enumerate().all(|(j, &b)| b == pixel(1, 3, j)));
    assert!(test.image(6).iter().enumerate().all(|(j, &b)| b == pixel(5, 6, j)));
    assert_eq!(test.labels, (0..7).map(|r| ((5 + r) % 10) as u8).collect::<Vec<_>>());
}

#[test]
fn meta_names_are_used() {
    let t = tmp();
    write_dataset(t.path(), 1);
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    std::fs::write(t.path().join("batches.meta.txt"), format!("{}\n\n", names.join("\n"))).unwrap();
    let (train, test) = data::load_cifar10(t.path()).unwrap();
    assert_eq!(train.class_names, names);
    assert_eq!(test.class_names, names);

    std::fs::write(t.path().join("batches.meta.txt"), "a\nb\nc\n").unwrap();
    let e = data::load_cifar10(t.path()).unwrap_err();
    assert!(matches!(e, DataError::BadMeta { .. }), "{e}");
    assert!(e.to_string().contains("batches.meta.txt") && e.to_string().contains("3 class names"), "{e}");
}

#[test]
fn truncated_file_is_an_error_naming_file_and_record() {
    let t = tmp();
    write_dataset(t.path(), 4);
    let p = t.path().join("data_batch_3.bin");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = data::load_cifar10(t.path()).unwrap_err();
    match &e {
        DataError::Truncated { path, record, .. } => {
            assert_eq!(path, &p);
            assert_eq!(*record, 3);
        }
        _ => panic!("wrong error: {e}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("data_batch_3.bin") && msg.contains("record 3"), "{msg}");

    // An empty file is not a batch either.
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(data::load_cifar10(t.path()), Err(DataError::WrongSize { .. })));
}

#[test]
fn bad_label_is_an_error_naming_file_and_record() {
    let t = tmp();
    write_dataset(t.path(), 5);
    let p = t.path().join(TEST_FILE);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[4 * RECORD_BYTES] = 10;
    std::fs::write(&p, bytes).unwrap();
    let e = data::load_cifar10(t.path()).unwrap_err();
    assert!(matches!(e, DataError::BadLabel { record: 4, label: 10, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("test_batch.bin") && msg.contains("record 4") && msg.contains("label 10"), "{msg}");
}

#[test]
fn missing_file_is_an_error() {
    let t = tmp();
    write_dataset(t.path(), 2);
    std::fs::remove_file(t.path().join("data_batch_4.bin")).unwrap();
    let e = data::load_cifar10(t.path()).unwrap_err();
    assert!(matches!(&e, DataError::MissingFile { path } if path.ends_with("data_batch_4.bin")), "{e}");
    // Even when the limit would not need the file: the set is incomplete.
    let opts = LoadOptions { train_limit: Some(1), test_limit: None };
    assert!(data::load_cifar10_with(t.path(), &opts).is_err());
    assert!(data::load_cifar10(t.path().join("nope")).is_err());
}

#[test]
fn train_limit_reads_only_what_is_needed() {
    let t = tmp();
    write_dataset(t.path(), 4);
    // A bad label in the last training file: not read when the limit stops before it.
    let p = t.path().join("data_batch_5.bin");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] = 200;
    std::fs::write(&p, bytes).unwrap();

    let opts = LoadOptions { train_limit: Some(10), test_limit: Some(3) };
    let (train, test) = data::load_cifar10_with(t.path(), &opts).unwrap();
    assert_eq!((train.len(), test.len()), (10, 3));
    // 4 + 4 + 2 records of the first three files.
    assert_eq!(train.labels, vec![0, 1, 2, 3, 1, 2, 3, 4, 2, 3]);
    assert!(train.image(9).iter().enumerate().all(|(j, &b)| b == pixel(2, 1, j)));

    let opts = LoadOptions { train_limit: Some(17), test_limit: None };
    let e = data::load_cifar10_with(t.path(), &opts).unwrap_err();
    assert!(matches!(e, DataError::BadLabel { record: 0, label: 200, .. }), "{e}");

    let opts = LoadOptions { train_limit: Some(0), test_limit: Some(0) };
    let (train, test) = data::load_cifar10_with(t.path(), &opts).unwrap();
    assert!(train.is_empty() && test.is_empty());
}

#[test]
fn dataset_accessors() {
    let t = tmp();
    write_dataset(t.path(), 6);
    let (train, _) = data::load_cifar10(t.path()).unwrap();
    // Labels (f + r) % 10 for f < 5, r < 6.
    let mut want = [0usize; 10];
    for f in 0..5 {
        for r in 0..6 {
            want[(f + r) % 10] += 1;
        }
    }
    assert_eq!(train.class_counts(), want);

    let s = train.subset(4..9).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(s.labels, train.labels[4..9]);
    assert_eq!(s.image(0), train.image(4));
    assert_eq!(train.subset(..).unwrap(), train);
    assert_eq!(train.subset(28..=29).unwrap().len(), 2);
    assert!(train.subset(25..31).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = train.subset(5..2);
    assert!(reversed.is_err());
    assert_eq!(train.first(3), train.subset(..3).unwrap());
    assert_eq!(train.first(1000).len(), 30);
    assert!(train.get_image(30).is_none());
    assert_eq!(train.get_image(29), Some(train.image(29)));

    let names = vec!["a".to_string(), "b".to_string()];
    assert!(Dataset::new(vec![0; IMAGE_BYTES * 2], vec![0, 1], names.clone(), "ok").is_ok());
    assert!(Dataset::new(vec![0; IMAGE_BYTES * 2], vec![0, 2], names.clone(), "bad label").is_err());
    assert!(Dataset::new(vec![0; IMAGE_BYTES], vec![0, 1], names, "short").is_err());
}

#[test]
fn data_dir_resolution_order() {
    let env = Some(std::ffi::OsString::from("/from/env"));
    assert_eq!(
        resolve_data_dir_from(Some("/explicit".into()), env.clone()),
        (PathBuf::from("/explicit"), DirSource::Explicit)
    );
    assert_eq!(resolve_data_dir_from(None, env), (PathBuf::from("/from/env"), DirSource::Env));
    assert_eq!(resolve_data_dir_from(None, Some("".into())).1, DirSource::Default);
    assert_eq!(resolve_data_dir_from(None, None), (PathBuf::from("data/cifar-10-batches-bin"), DirSource::Default));
}

// ---------------------------------------------------------------------------------------------
// Synthetic data

#[test]
fn synthetic_is_deterministic_balanced_and_labelled_as_such() {
    let (a_train, a_test) = data::synthetic(7, 1003, 250);
    let (b_train, b_test) = data::synthetic(7, 1003, 250);
    assert_eq!(a_train, b_train);
    assert_eq!(a_test, b_test);
    let (c_train, _) = data::synthetic(8, 1003, 250);
    assert_ne!(a_train.images, c_train.images);
    assert_ne!(a_train.labels, c_train.labels);
    // Train and test come from different streams.
    assert_ne!(a_train.images[..250 * IMAGE_BYTES], a_test.images[..]);

    assert_eq!((a_train.len(), a_test.len()), (1003, 250));
    let counts = a_train.class_counts();
    assert!(counts.iter().all(|&c| c == 100 || c == 101), "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 1003);
    assert_eq!(a_test.class_counts(), vec![25; 10]);
    assert_eq!(a_train.name, "synthetic (not CIFAR-10)");
    assert!(a_train.class_names.iter().all(|n| n.starts_with("synthetic")));
    // Shuffled, not in label order.
    assert_ne!(a_train.labels[..20], (0..20).map(|i| (i % 10) as u8).collect::<Vec<_>>()[..]);
    // Images use the range (not flat, not saturated everywhere).
    let mean = a_train.images.iter().map(|&b| b as f64).sum::<f64>() / a_train.images.len() as f64;
    assert!((40.0..200.0).contains(&mean), "mean {mean}");
    let distinct = a_train.image(0).iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct > 20, "{distinct} distinct values");
}

/// Per-class mean images differ: classes 3 and 5 (square vs square with a centre dot) are close,
/// and the disk (0) is far from the checkerboard (6).
#[test]
fn synthetic_classes_differ() {
    let (train, _) = data::synthetic(3, 2000, 0);
    let mut means = vec![vec![0f64; IMAGE_BYTES]; 10];
    for i in 0..train.len() {
        let m = &mut means[train.labels[i] as usize];
        for (a, &b) in m.iter_mut().zip(train.image(i)) {
            *a += b as f64 / 200.0;
        }
    }
    let dist = |a: usize, b: usize| means[a].iter().zip(&means[b]).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    assert!(dist(3, 5) < dist(0, 6), "3-5 {} vs 0-6 {}", dist(3, 5), dist(0, 6));
    for a in 0..10 {
        for b in a + 1..10 {
            assert!(dist(a, b) > 0.0);
        }
    }
}

#[test]
fn resolve_picks_the_source() {
    let t = tmp();
    let loaded = data::resolve(Some(t.path().to_path_buf()), true, false, Some(30), 1).unwrap();
    assert!(loaded.source.is_synthetic());
    assert_eq!((loaded.train.len(), loaded.test.len()), (30, data::SYNTHETIC_TEST));

    let dir = t.path().join("cifar");
    // Named by the user and absent: an error, never a download or synthetic data.
    let e = data::resolve(Some(dir.clone()), false, true, Some(30), 1).unwrap_err();
    assert!(matches!(&e, DataError::NotFound { from: DirSource::Explicit, .. }), "{e}");
    assert!(!dir.exists());
    // Only the default location falls back, and says so.
    let spec =
        DownloadSpec { url: "http://127.0.0.1:9/none.tar.gz".into(), progress: false, ..DownloadSpec::default() };
    let loaded = data::resolve_with(&dir, DirSource::Default, false, false, &spec, Some(30), 1).unwrap();
    match &loaded.source {
        DataSource::Synthetic { reason } => assert!(reason.contains("--no-download"), "{reason}"),
        s => panic!("{s}"),
    }
    assert_eq!(loaded.train.name, "synthetic (not CIFAR-10)");
    // The default location after a failed download: synthetic, and no folder left behind.
    let deep = t.path().join("data").join("cifar-10-batches-bin");
    let loaded = data::resolve_with(&deep, DirSource::Default, false, true, &spec, Some(30), 1).unwrap();
    match &loaded.source {
        DataSource::Synthetic { reason } => assert!(reason.contains("download failed"), "{reason}"),
        s => panic!("{s}"),
    }
    assert!(!t.path().join("data").exists(), "a failed download left data/ behind");
    // $CIFAR10_DIR is the user's word too.
    let e = data::resolve_with(&dir, DirSource::Env, false, true, &spec, None, 1).unwrap_err();
    assert!(e.to_string().contains("CIFAR10_DIR"), "{e}");
    // The folder above cifar-10-batches-bin: a hint naming the subfolder.
    write_dataset(&t.path().join("above").join("cifar-10-batches-bin"), 3);
    let e = data::resolve(Some(t.path().join("above")), false, true, None, 1).unwrap_err();
    assert!(e.to_string().contains("use ") && e.to_string().contains("above/cifar-10-batches-bin"), "{e}");

    write_dataset(&dir, 3);
    let loaded = data::resolve(Some(dir.clone()), false, false, Some(4), 1).unwrap();
    let nonstandard = data::nonstandard_counts(&dir).unwrap();
    assert_eq!(nonstandard.len(), 6, "3 records in each file: {nonstandard:?}");
    assert_eq!(loaded.source, DataSource::Cifar10 { dir: dir.clone(), downloaded: false, nonstandard });
    assert_eq!((loaded.train.len(), loaded.test.len()), (4, 3));

    // Present but corrupt: an error, not a silent fallback.
    std::fs::write(dir.join(TEST_FILE), [1u8; 10]).unwrap();
    assert!(data::resolve(Some(dir.clone()), false, true, None, 1).is_err());
    // Partly there: an error too.
    std::fs::remove_file(dir.join(TEST_FILE)).unwrap();
    let e = data::resolve(Some(dir), false, true, None, 1).unwrap_err();
    assert!(matches!(&e, DataError::Incomplete { missing, .. } if missing == &["test_batch.bin"]), "{e}");
}

/// The six files at the official size, 10,000 records each: `real` generated records, then
/// zero bytes (label 0, a black image) up to the size, written sparse so the test stays cheap.
fn write_official_size(dir: &Path, real: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, name) in all_files().enumerate() {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        (&file).write_all(&batch_bytes(f, real)).unwrap();
        file.set_len((data::RECORDS_PER_FILE * RECORD_BYTES) as u64).unwrap();
    }
}

/// Batch files that hold a whole number of records, but not the official 10,000 (a
/// `test_batch.bin` cut at a record boundary, a reduced copy), load but are named as such: the
/// source, its name and the fingerprint say "non-standard counts", never plain "CIFAR-10".
#[test]
fn nonstandard_record_counts_are_named_and_recorded() {
    let t = tmp();
    let dir = t.path().join("cifar");
    write_official_size(&dir, 30);
    assert_eq!(data::nonstandard_counts(&dir).unwrap(), []);
    assert_eq!(data::cifar10_name(&[]), "CIFAR-10");
    let loaded = data::resolve(Some(dir.clone()), false, false, Some(20), 1).unwrap();
    assert_eq!(loaded.source.to_string(), format!("CIFAR-10 from {}", dir.display()));
    let official = data::DataFingerprint::new(&loaded.source, &loaded.train, &loaded.test, Some(20), None, 1);
    assert_eq!(official.nonstandard_counts, []);
    let json = serde_json::to_string(&official).unwrap();
    assert!(!json.contains("nonstandard"), "the official files' fingerprint is unchanged: {json}");

    // test_batch.bin cut to 5,000 records, at a record boundary.
    let test_file = std::fs::OpenOptions::new().write(true).open(dir.join(TEST_FILE)).unwrap();
    test_file.set_len((5000 * RECORD_BYTES) as u64).unwrap();
    let counts = data::nonstandard_counts(&dir).unwrap();
    let cut = data::NonStandardCount { file: TEST_FILE.into(), records: 5000, expected: 10_000 };
    assert_eq!(counts, [cut]);
    let name = "CIFAR-10 format with non-standard counts (test_batch.bin: 5000 records, 10000 expected)";
    assert_eq!(data::cifar10_name(&counts), name);
    let loaded = data::resolve(Some(dir.clone()), false, false, Some(20), 1).unwrap();
    assert_eq!(loaded.test.len(), 5000);
    assert_eq!(loaded.source.to_string(), format!("{name} from {}", dir.display()));
    let fp = data::DataFingerprint::new(&loaded.source, &loaded.train, &loaded.test, Some(20), None, 1);
    assert_eq!(fp.nonstandard_counts, counts);
    let fields: Vec<String> = official.diff(&fp).iter().map(|d| d.to_string()).collect();
    assert!(fields.iter().any(|f| f.starts_with("nonstandard_counts")), "{fields:?}");

    // A small generated copy: every file is named, the training files together.
    let small = t.path().join("small");
    write_dataset(&small, 3);
    assert_eq!(
        data::cifar10_name(&data::nonstandard_counts(&small).unwrap()),
        "CIFAR-10 format with non-standard counts (data_batch_1.bin to data_batch_5.bin: 3 records each; \
         test_batch.bin: 3 records; 10000 expected in each)"
    );
}

/// A file named as the data folder (or standing where one of its parent folders should be) is
/// one clear error naming it, whoever named the folder.
#[test]
fn a_file_named_as_the_data_folder_is_a_clear_error() {
    let t = tmp();
    let file = t.path().join("cifar.bin");
    std::fs::write(&file, b"not a folder").unwrap();
    let below = file.join("cifar-10-batches-bin");
    let f = file.display();
    for (dir, from, start) in [
        (&file, DirSource::Explicit, format!("{f} (from --data-dir): is a file, where a folder is expected")),
        (&below, DirSource::Env, format!("{} (from CIFAR10_DIR): {f} is a file, where", below.display())),
        (&below, DirSource::Default, format!("{} (from default): {f} is a file, where", below.display())),
    ] {
        let e = data::resolve_with(dir, from, false, true, &DownloadSpec::default(), None, 1).unwrap_err();
        assert!(matches!(&e, DataError::NotAFolder { file: f, .. } if *f == file), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&start), "{msg}");
        assert!(!msg.contains("os error"), "{msg}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

// ---------------------------------------------------------------------------------------------
// Download against a local server

/// How the test server answers.
#[derive(Clone, Copy)]
enum Serve {
    All,
    /// Announce the full length but send only this many bytes, then close.
    Truncate(usize),
    NotFound,
}

/// Serves `body` once on 127.0.0.1; returns the URL and the server thread.
fn serve(body: Vec<u8>, how: Serve) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            req.push(b[0]);
        }
        let (status, send) = match how {
            Serve::All => ("200 OK", body.len()),
            Serve::Truncate(n) => ("200 OK", n),
            Serve::NotFound => ("404 Not Found", 0),
        };
        let len = if matches!(how, Serve::NotFound) { 0 } else { body.len() };
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body[..send]);
        let _ = s.flush();
    });
    (url, handle)
}

const REC: usize = 2;

/// A gzipped tar laid out as the official archive, `REC` records per batch file, plus `extra`
/// raw entries (name, entry type, link target, data).
fn archive(extra: &[(&[u8], tar::EntryType, &str, &[u8])], skip: &[&str]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("cifar-10-batches-bin/").unwrap();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let mut files: Vec<(String, Vec<u8>)> =
        all_files().enumerate().map(|(f, n)| (n.to_string(), batch_bytes(f, REC))).collect();
    files.push(("batches.meta.txt".into(), data::CIFAR10_CLASS_NAMES.join("\n").into_bytes()));
    files.push(("readme.html".into(), b"<html></html>".to_vec()));
    files.push(("unexpected.bin".into(), b"skip me".to_vec()));
    for (name, bytes) in files.iter().filter(|(n, _)| !skip.contains(&n.as_str())) {
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("cifar-10-batches-bin/{name}")).unwrap();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &bytes[..]).unwrap();
    }
    for &(path, kind, link, bytes) in extra {
        let mut h = tar::Header::new_old();
        // Written raw: `set_path` refuses `..` and absolute paths, which is what is under test.
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, bytes).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn spec(url: String, body: &[u8]) -> DownloadSpec {
    DownloadSpec {
        url,
        md5: md5_hex(body),
        size: Some(body.len() as u64),
        expected_record_counts: [REC; 6],
        progress: false,
    }
}

#[test]
fn download_success() {
    let body = archive(&[], &[]);
    let (url, server) = serve(body.clone(), Serve::All);
    let t = tmp();
    let target = t.path().join("data").join("cifar-10-batches-bin");
    data::download_cifar10(&target, &spec(url, &body)).unwrap();
    server.join().unwrap();
    let mut want: Vec<String> = ARCHIVE_FILES.iter().map(|f| format!("data/cifar-10-batches-bin/{f}")).collect();
    want.extend(["data".into(), "data/cifar-10-batches-bin".into()]);
    want.sort();
    assert_eq!(tree(t.path()), want, "only the expected files, no temporaries");
    let (train, test) = data::load_cifar10(&target).unwrap();
    assert_eq!((train.len(), test.len()), (5 * REC, REC));
    assert!(test.image(1).iter().enumerate().all(|(j, &b)| b == pixel(5, 1, j)));

    // The target is never overwritten.
    let e = data::download_cifar10(&target, &spec("http://127.0.0.1:9/x".into(), &body)).unwrap_err();
    assert!(matches!(e, DataError::TargetExists { .. }), "{e}");
}

#[test]
fn download_into_existing_empty_dir() {
    let body = archive(&[], &[]);
    let (url, server) = serve(body.clone(), Serve::All);
    let t = tmp();
    let target = t.path().join("c10");
    std::fs::create_dir(&target).unwrap();
    data::download_cifar10(&target, &spec(url, &body)).unwrap();
    server.join().unwrap();
    assert!(data::cifar10_present(&target));
}

/// The download failed: nothing at the target, no temporaries beside it, and not even the
/// `data/` folder the download created.
#[track_caller]
fn assert_clean(root: &Path) {
    assert_eq!(tree(root), Vec::<String>::new(), "leftovers after a failed download");
}

#[test]
fn download_wrong_md5_leaves_nothing() {
    let body = archive(&[], &[]);
    let (url, server) = serve(body.clone(), Serve::All);
    let t = tmp();
    let target = t.path().join("data").join("cifar-10-batches-bin");
    let mut s = spec(url, &body);
    s.md5 = "0123456789abcdef0123456789abcdef".into();
    let e = data::download_cifar10(&target, &s).unwrap_err();
    server.join().unwrap();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("MD5"), "{e}");
    assert_clean(t.path());
}

#[test]
fn download_rejects_hostile_entries() {
    type Extra<'a> = (&'a [u8], tar::EntryType, &'a str, &'a [u8]);
    let cases: [(&str, Vec<Extra>); 5] = [
        ("dotdot", vec![(b"../evil", tar::EntryType::Regular, "", b"owned")]),
        ("nested dotdot", vec![(b"cifar-10-batches-bin/../../evil", tar::EntryType::Regular, "", b"owned")]),
        ("absolute", vec![(b"/tmp/evenclass-test-evil-abs", tar::EntryType::Regular, "", b"owned")]),
        ("symlink", vec![(b"cifar-10-batches-bin/evil-link", tar::EntryType::Symlink, "../../evil", b"")]),
        // A link that takes the place of an expected file (which is then left out of the archive).
        ("symlinked batch", vec![(b"cifar-10-batches-bin/readme.html", tar::EntryType::Symlink, "/etc/passwd", b"")]),
    ];
    for (what, extra) in cases {
        let skip: &[&str] = if what == "symlinked batch" { &["readme.html"] } else { &[] };
        let body = archive(&extra, skip);
        let (url, server) = serve(body.clone(), Serve::All);
        let t = tmp();
        let target = t.path().join("data").join("cifar-10-batches-bin");
        let e = data::download_cifar10(&target, &spec(url, &body)).unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, DataError::UnsafeEntry { .. }), "{what}: {e}");
        assert_clean(t.path());
        assert!(!Path::new("/tmp/evenclass-test-evil-abs").exists());
    }
}

#[test]
fn download_rejects_incomplete_or_wrong_archives() {
    let t = tmp();
    let target = t.path().join("data").join("cifar-10-batches-bin");

    let body = archive(&[], &["data_batch_4.bin"]);
    let (url, server) = serve(body.clone(), Serve::All);
    let e = data::download_cifar10(&target, &spec(url, &body)).unwrap_err();
    server.join().unwrap();
    assert!(matches!(&e, DataError::ArchiveIncomplete { missing, .. } if missing == &["data_batch_4.bin"]), "{e}");
    assert_clean(t.path());

    // Record counts other than the expected ones.
    let body = archive(&[], &[]);
    let (url, server) = serve(body.clone(), Serve::All);
    let mut s = spec(url, &body);
    s.expected_record_counts[5] = 3;
    let e = data::download_cifar10(&target, &s).unwrap_err();
    server.join().unwrap();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    assert_clean(t.path());

    // Not a gzip at all.
    let body = b"<html>not found</html>".to_vec();
    let (url, server) = serve(body.clone(), Serve::All);
    let e = data::download_cifar10(&target, &spec(url, &body)).unwrap_err();
    server.join().unwrap();
    assert!(matches!(e, DataError::Archive { .. }), "{e}");
    assert_clean(t.path());
}

#[test]
fn download_truncated_transfer_leaves_nothing() {
    let body = archive(&[], &[]);
    for size in [Some(body.len() as u64), None] {
        let (url, server) = serve(body.clone(), Serve::Truncate(body.len() / 2));
        let t = tmp();
        let target = t.path().join("data").join("cifar-10-batches-bin");
        let mut s = spec(url, &body);
        s.size = size;
        let e = data::download_cifar10(&target, &s).unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, DataError::Http { .. } | DataError::DownloadSize { .. }), "{e}");
        assert_clean(t.path());
    }
}

#[test]
fn download_http_errors() {
    let t = tmp();
    let target = t.path().join("data").join("cifar-10-batches-bin");

    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = spec(format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz"), b"");
    let e = data::download_cifar10(&target, &s).unwrap_err();
    assert!(matches!(e, DataError::Http { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
    assert_clean(t.path());

    let (url, server) = serve(Vec::new(), Serve::NotFound);
    let e = data::download_cifar10(&target, &spec(url, b"")).unwrap_err();
    server.join().unwrap();
    assert!(e.to_string().contains("404"), "{e}");
    assert_clean(t.path());

    // Another size than announced by the spec: refused before the transfer.
    let body = archive(&[], &[]);
    let (url, server) = serve(body.clone(), Serve::All);
    let mut s = spec(url, &body);
    s.size = Some(body.len() as u64 + 1);
    let e = data::download_cifar10(&target, &s).unwrap_err();
    server.join().unwrap();
    assert!(matches!(e, DataError::DownloadSize { .. }), "{e}");
    assert_clean(t.path());
}

// ---------------------------------------------------------------------------------------------
// The real data

#[test]
fn real_cifar10_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/cifar-10-batches-bin");
    if !dir.is_dir() {
        eprintln!("skipped: no CIFAR-10 at {}", dir.display());
        return;
    }
    let start = std::time::Instant::now();
    let (train, test) = data::load_cifar10(&dir).unwrap();
    eprintln!("loaded 60k records in {:?}", start.elapsed());
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    assert_eq!(train.class_counts(), vec![5000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    assert_eq!(train.class_names, data::CIFAR10_CLASS_NAMES.map(String::from).to_vec());

    let opts = LoadOptions { train_limit: Some(12_345), test_limit: None };
    let (part, _) = data::load_cifar10_with(&dir, &opts).unwrap();
    assert_eq!(part, train.first(12_345));
    assert_eq!(data::nonstandard_counts(&dir).unwrap(), [], "the official files have the official counts");
}

// ---- stratified validation split -------------------------------------------------------------------

#[test]
fn stratified_split_is_exact_seeded_and_disjoint() {
    use evenclass::data::stratified_split;
    // 10 classes, unequal sizes: 100 + 10 * c images of class c.
    let labels: Vec<u8> = (0..10u8).flat_map(|c| std::iter::repeat_n(c, 100 + 10 * c as usize)).collect();
    let n = labels.len();
    let s = stratified_split(&labels, 10, 300, 7).unwrap();
    assert_eq!(s.val.len(), 300);
    assert_eq!(s.train.len() + s.val.len(), n);
    let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "a partition of every image");
    for c in 0..10u8 {
        let in_val = s.val.iter().filter(|&&i| labels[i] == c).count() as f64;
        let share = 300.0 * (100 + 10 * c as usize) as f64 / n as f64;
        assert!((in_val - share).abs() < 1.0, "class {c}: {in_val} vs {share}");
    }
    assert_eq!(stratified_split(&labels, 10, 300, 7).unwrap(), s, "same seed, same split");
    assert_ne!(stratified_split(&labels, 10, 300, 8).unwrap(), s, "another seed, another split");
}

#[test]
fn stratified_split_bad_sizes_are_clear_errors() {
    use evenclass::data::stratified_split;
    let labels: Vec<u8> = (0..3u8).flat_map(|c| std::iter::repeat_n(c, 4)).collect();
    let msg = |r: evenclass::data::Result<evenclass::data::Split>| r.unwrap_err().to_string();
    assert!(msg(stratified_split(&labels, 3, 12, 0)).contains("nothing to train on"));
    assert!(msg(stratified_split(&labels, 3, 50, 0)).contains("nothing to train on"));
    // 2 validation images for 3 classes: one class gets none.
    assert!(msg(stratified_split(&labels, 3, 2, 0)).contains("without validation samples"));
    // A class of one image cannot give one to validation and keep one for training.
    let mut one = labels.clone();
    one.push(3);
    let e = msg(stratified_split(&one, 4, 8, 0));
    assert!(e.contains("class 3") && e.contains("none to train on"), "{e}");
    assert!(msg(stratified_split(&[0, 5], 3, 1, 0)).contains("label 5"));
    // A class that is absent is fine.
    let s = stratified_split(&labels, 4, 3, 0).unwrap();
    assert_eq!(s.val.len(), 3);
}

#[test]
fn dataset_select_takes_images_in_order() {
    let (train, _) = evenclass::data::synthetic(5, 6, 1);
    let sel = train.select(&[3, 0], "picked").unwrap();
    assert_eq!(sel.labels, vec![train.labels[3], train.labels[0]]);
    assert_eq!(sel.image(0), train.image(3));
    assert_eq!(sel.name, "picked");
    assert!(train.select(&[train.len()], "x").is_err());
}
