//! Writing a report's files ([`write_all`]) and reading `report.json` back ([`read_report`]).
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::schema::{Report, REPORT_FORMAT};
use super::{chart, compare, ReportError};

/// The files written by [`write_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFiles {
    pub json: PathBuf,
    pub csv: PathBuf,
    pub svg: PathBuf,
    pub png: PathBuf,
}

/// Validate `report`, create `out_dir` (and its parents) and write `report.json`,
/// `per_class.csv`, `recall.svg` and `recall.png` into it, each atomically (temporary file in
/// `out_dir`, flushed to disk, then renamed over the target). The files are written in that
/// order, so if the chart fails the JSON and CSV are already in place.
pub fn write_all(report: &Report, out_dir: &Path) -> Result<WrittenFiles, ReportError> {
    report.validate()?;
    fs::create_dir_all(out_dir).map_err(|e| ReportError::io("create directory", out_dir, e))?;
    let files = WrittenFiles {
        json: out_dir.join("report.json"),
        csv: out_dir.join("per_class.csv"),
        svg: out_dir.join("recall.svg"),
        png: out_dir.join("recall.png"),
    };

    let mut json =
        serde_json::to_vec_pretty(report).map_err(|source| ReportError::Json { path: files.json.clone(), source })?;
    json.push(b'\n');
    write_atomic(&files.json, &json)?;

    write_atomic(&files.csv, &per_class_csv(report)?)?;
    write_atomic(&files.svg, chart::render_svg(report)?.as_bytes())?;
    write_atomic(&files.png, &chart::render_png(report)?)?;
    if !report.methods.is_empty() {
        write_atomic(&out_dir.join("comparison.md"), compare::comparison_markdown(report).as_bytes())?;
        write_atomic(&out_dir.join("comparison.csv"), &compare::comparison_csv(report)?)?;
        write_atomic(&out_dir.join("intervals.csv"), &compare::intervals_csv(report)?)?;
        let chart = compare::methods_chart_report(report);
        write_atomic(&out_dir.join("methods.svg"), chart::render_svg(&chart)?.as_bytes())?;
        write_atomic(&out_dir.join("methods.png"), &chart::render_png(&chart)?)?;
    }
    Ok(files)
}

/// Read a `report.json` written by [`write_all`] and validate it. A file of another format
/// version (or none, from before versions) is [`ReportError::FormatVersion`], naming both.
pub fn read_report(path: impl AsRef<Path>) -> Result<Report, ReportError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| ReportError::io("read", path, e))?;
    // The version first, so that an old file gets this error rather than a missing field.
    #[derive(Deserialize)]
    struct Version {
        format: Option<u32>,
    }
    let version: Version =
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })?;
    if version.format != Some(REPORT_FORMAT) {
        return Err(ReportError::FormatVersion {
            path: path.to_path_buf(),
            found: version.format,
            expected: REPORT_FORMAT,
        });
    }
    let report: Report =
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })?;
    report.validate()?;
    Ok(report)
}

/// The CSV text of `per_class.csv`: header, then one row per stage × split (test, train, and
/// val when there is one) × class, then the same for every method entry (its `stage` column
/// reads `method: NAME (seed S)`).
fn per_class_csv(report: &Report) -> Result<Vec<u8>, ReportError> {
    #[derive(Serialize)]
    struct Row<'a> {
        run_id: &'a str,
        dataset: &'a str,
        stage: &'a str,
        split: &'a str,
        class_index: usize,
        class_name: &'a str,
        support: u64,
        recall: f64,
        precision: f64,
        f1: f64,
        class_weight: f64,
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let method_names: Vec<String> = report
        .methods
        .iter()
        .map(|m| match m.seed {
            Some(seed) => format!("method: {} (seed {seed})", m.name),
            None => format!("method: {}", m.name),
        })
        .collect();
    let rows = report
        .stages
        .iter()
        .map(|s| (s, s.name.as_str()))
        .chain(report.methods.iter().zip(&method_names).map(|(m, n)| (m, n.as_str())));
    for (stage, stage_name) in rows {
        let splits = [("test", Some(&stage.test)), ("train", Some(&stage.train)), ("val", stage.val.as_ref())];
        for (split, m) in splits.into_iter().filter_map(|(n, m)| m.map(|m| (n, m))) {
            for (k, class_name) in report.class_names.iter().enumerate() {
                w.serialize(Row {
                    run_id: &report.run_id,
                    dataset: &report.dataset,
                    stage: stage_name,
                    split,
                    class_index: k,
                    class_name,
                    support: m.support[k],
                    recall: m.recall[k],
                    precision: m.precision[k],
                    f1: m.f1[k],
                    class_weight: stage.class_weights[k],
                })?;
            }
        }
    }
    w.into_inner().map_err(|e| ReportError::Csv(e.into_error().into()))
}

/// [`crate::fs::write_atomic`] with the report's error type.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::fs::write_atomic(path, bytes).map_err(ReportError::from)
}
