//! Corpus discovery and reading: files, directories (recursive, glob include/exclude),
//! JSON Lines with a named text field, and `-` for stdin. Binary files, invalid UTF-8,
//! files above [`MAX_CORPUS_FILE_BYTES`] and entries of a directory that are not regular
//! files (FIFOs, sockets, devices, links to them) are skipped and counted, never fatal and
//! never waited on. A path given explicitly must be a regular file or a directory (a FIFO
//! is refused: pipe it to `-` instead). Paths are visited in sorted order so builds are
//! deterministic.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use engram_files::file::{FileError, Limit, read_regular, read_stream};
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Largest corpus file (or standard input) read: each is read whole and tokenized as one
/// document or one JSON Lines file. Larger files are skipped with a warning; split them.
pub const MAX_CORPUS_FILE_BYTES: Limit = Limit {
    what: "corpus file",
    name: "MAX_CORPUS_FILE_BYTES",
    bytes: 4 << 30,
};

/// Where documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A plain text file: one document.
    Text(PathBuf),
    /// A JSON Lines file: one document per line, text in a named field.
    JsonLines(PathBuf),
    /// Standard input: one document, or JSON Lines when a field is named for stdin.
    Stdin,
}

/// How inputs are selected and read.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// Globs a file path must match (any); empty means every file.
    pub include: Vec<String>,
    /// Globs that exclude a file or directory path (any).
    pub exclude: Vec<String>,
    /// Field holding the text in JSON Lines inputs.
    pub jsonl_field: String,
    /// Read stdin as JSON Lines instead of one document.
    pub stdin_jsonl: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            jsonl_field: "text".into(),
            stdin_jsonl: false,
        }
    }
}

fn globset(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).with_context(|| format!("invalid glob {p:?}"))?);
    }
    Ok(b.build()?)
}

fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson")
    )
}

/// Expands inputs into an ordered list of sources. A missing input is an error; an empty
/// expansion is an error too (nothing to build from).
pub fn discover(inputs: &[PathBuf], options: &CorpusOptions) -> Result<Vec<Input>> {
    let include = globset(&options.include)?;
    let exclude = globset(&options.exclude)?;
    let mut sources = Vec::new();
    for input in inputs {
        if input.as_os_str() == "-" {
            sources.push(Input::Stdin);
            continue;
        }
        let meta = std::fs::metadata(input)
            .with_context(|| format!("input {} cannot be read", input.display()))?;
        if meta.is_file() {
            sources.push(classify(input.clone()));
            continue;
        }
        if !meta.is_dir() {
            bail!(
                "input {} is not a regular file or a directory (a FIFO, socket or device): \
                 to read a pipe, give `-` and redirect it to standard input",
                input.display()
            );
        }
        let mut files = Vec::new();
        let walker = walkdir::WalkDir::new(input)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !exclude.is_match(e.path()));
        for entry in walker {
            let entry = entry.with_context(|| format!("walking {}", input.display()))?;
            // Everything but directories becomes a source: special files are reported as
            // skipped when read (opening them never blocks), not silently dropped here.
            if entry.file_type().is_dir() {
                continue;
            }
            let path = entry.path();
            if !options.include.is_empty() && !include.is_match(path) {
                continue;
            }
            files.push(path.to_path_buf());
        }
        sources.extend(files.into_iter().map(classify));
    }
    if sources.is_empty() {
        bail!("no input files: the paths given match nothing (check --include/--exclude)");
    }
    Ok(sources)
}

fn classify(path: PathBuf) -> Input {
    if is_jsonl(&path) {
        Input::JsonLines(path)
    } else {
        Input::Text(path)
    }
}

/// Why a source or a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A NUL byte in the first 8 KiB.
    Binary,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// A JSON Lines record without the text field, or not JSON.
    BadRecord(String),
    /// Not a regular file (FIFO, socket, device): never opened for reading.
    NotRegular(&'static str),
    /// Larger than [`MAX_CORPUS_FILE_BYTES`].
    TooLarge(u64),
    /// The file could not be read.
    Unreadable(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Binary => write!(f, "binary file"),
            Skip::InvalidUtf8 => write!(f, "invalid UTF-8"),
            Skip::BadRecord(why) => write!(f, "bad JSON Lines record: {why}"),
            Skip::NotRegular(kind) => write!(f, "not a regular file ({kind})"),
            Skip::TooLarge(bytes) => write!(
                f,
                "{bytes} bytes, above the {}-byte limit ({})",
                MAX_CORPUS_FILE_BYTES.bytes, MAX_CORPUS_FILE_BYTES.name
            ),
            Skip::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// The documents of one source, plus what was skipped inside it.
#[derive(Debug, Default)]
pub struct Documents {
    /// The documents' texts, in source order.
    pub texts: Vec<String>,
    /// Bytes read from the source.
    pub bytes: u64,
    /// Records or files left out, with the reason.
    pub skipped: Vec<(String, Skip)>,
}

const BINARY_SNIFF_BYTES: usize = 8192;

fn decode(bytes: Vec<u8>, name: &str, out: &mut Documents) -> Option<String> {
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        out.skipped.push((name.to_owned(), Skip::Binary));
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(_) => {
            out.skipped.push((name.to_owned(), Skip::InvalidUtf8));
            None
        }
    }
}

/// Reads one source. Read errors become skips (counted warnings), never aborts.
pub fn read(source: &Input, options: &CorpusOptions) -> Documents {
    let mut out = Documents::default();
    let (path, read, jsonl) = match source {
        Input::Text(p) | Input::JsonLines(p) => (
            p.as_path(),
            read_regular(p, MAX_CORPUS_FILE_BYTES),
            matches!(source, Input::JsonLines(_)),
        ),
        Input::Stdin => {
            let p = Path::new("<stdin>");
            let read = read_stream(std::io::stdin().lock(), 0, p, MAX_CORPUS_FILE_BYTES);
            (p, read, options.stdin_jsonl)
        }
    };
    let name = path.display().to_string();
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            let why = match e {
                FileError::NotRegular { kind, .. } => Skip::NotRegular(kind),
                FileError::TooLarge { found, .. } => Skip::TooLarge(found),
                other => Skip::Unreadable(other.to_string()),
            };
            out.skipped.push((name, why));
            return out;
        }
    };
    out.bytes = bytes.len() as u64;
    let Some(text) = decode(bytes, &name, &mut out) else {
        return out;
    };
    if !jsonl {
        out.texts.push(text);
        return out;
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => v,
            Err(e) => {
                out.skipped
                    .push((format!("{name}:{}", i + 1), Skip::BadRecord(e.to_string())));
                continue;
            }
        };
        match record.get(&options.jsonl_field).and_then(|v| v.as_str()) {
            Some(t) => out.texts.push(t.to_owned()),
            None => out.skipped.push((
                format!("{name}:{}", i + 1),
                Skip::BadRecord(format!("no string field {:?}", options.jsonl_field)),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_sorted_filtered_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/test")).expect("mkdir");
        for f in ["b.py", "a/x.py", "a/test/t.py", "a/notes.txt", "c.jsonl"] {
            std::fs::write(root.join(f), "x = 1\n").expect("write");
        }
        let opts = CorpusOptions {
            include: vec!["**/*.py".into(), "**/*.jsonl".into()],
            exclude: vec!["**/test".into()],
            ..CorpusOptions::default()
        };
        let got = discover(&[root.to_path_buf()], &opts).expect("files");
        let want = vec![
            Input::Text(root.join("a/x.py")),
            Input::Text(root.join("b.py")),
            Input::JsonLines(root.join("c.jsonl")),
        ];
        assert_eq!(got, want);
        assert!(discover(&[root.join("missing")], &opts).is_err());
        let none = CorpusOptions {
            include: vec!["*.rs".into()],
            ..CorpusOptions::default()
        };
        assert!(discover(&[root.to_path_buf()], &none).is_err());
    }

    #[test]
    fn skips_binary_invalid_and_bad_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin.dat");
        std::fs::write(&bin, b"ab\0cd").expect("write");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, [0xff, 0xfe, b'a']).expect("write");
        let jl = dir.path().join("d.jsonl");
        std::fs::write(
            &jl,
            "{\"text\": \"one\"}\nnot json\n{\"body\": 1}\n\n{\"text\": \"two\"}\n",
        )
        .expect("write");
        let opts = CorpusOptions::default();
        assert_eq!(read(&Input::Text(bin), &opts).skipped[0].1, Skip::Binary);
        assert_eq!(
            read(&Input::Text(bad), &opts).skipped[0].1,
            Skip::InvalidUtf8
        );
        let docs = read(&Input::JsonLines(jl), &opts);
        assert_eq!(docs.texts, ["one", "two"]);
        assert_eq!(docs.skipped.len(), 2);
    }

    /// FIFOs, devices and links to them inside a corpus directory are skipped and counted
    /// without being opened for reading (a FIFO with no writer blocked the build forever);
    /// given explicitly, they are refused.
    #[test]
    fn special_files_are_skipped_in_directories_and_refused_explicitly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("a.py"), "x = 1\n").expect("write");
        let fifo = root.join("b.py");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success();
        assert!(ok);
        std::os::unix::fs::symlink("/dev/zero", root.join("c.py")).expect("symlink");
        let opts = CorpusOptions::default();
        let sources = discover(&[root.to_path_buf()], &opts).expect("files");
        assert_eq!(sources.len(), 3);
        let skips: Vec<Skip> = sources
            .iter()
            .flat_map(|s| read(s, &opts).skipped)
            .map(|(_, why)| why)
            .collect();
        assert_eq!(
            skips,
            [
                Skip::NotRegular("FIFO"),
                Skip::NotRegular("character device")
            ]
        );
        for special in [fifo, root.join("c.py")] {
            let e = discover(&[special], &opts).expect_err("explicit special file");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
}
