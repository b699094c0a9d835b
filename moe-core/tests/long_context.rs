//! Long prompts: `--prompt-file`, `--prompt-tokens`, and `--context-length`, which runs a
//! model past its trained context for timing (labelled as such: a warning on stderr and
//! `context_extended` in `--json`). Bad values are usage errors that name the flag or the
//! file, before the model loads where they can be.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tokenizer_available;
use moe_core::context::ContextExtension;
use moe_core::{Model, ModelConfig, Weights};

fn moe_core(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-core"))
        .args(args)
        .output()
        .expect("moe-core runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}

/// Some Python, `reps` times: about 50 tokens a repetition.
fn python(reps: usize) -> String {
    "import os\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        path = \
     os.path.join(root, name)\n        if os.path.isdir(path):\n            yield from \
     walk(path)\n"
        .repeat(reps)
}

#[test]
fn bad_values_and_prompt_files_fail_before_the_model_loads() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("missing.py");
    let binary = tmp.path().join("binary.py");
    std::fs::write(&binary, b"def f():\n    return '\xff\xfe'\n").expect("write");
    let mut cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--context-length".into(), "0".into()],
            "--context-length".into(),
        ),
        (
            vec!["--context-length".into(), "65537".into()],
            "MAX_POSITIONS".into(),
        ),
        (
            vec!["--context-length".into(), "4k".into()],
            "--context-length".into(),
        ),
        (
            vec!["--prompt-tokens".into(), "0".into()],
            "--prompt-tokens".into(),
        ),
        (
            vec!["--prompt-file".into(), missing.display().to_string()],
            format!("{}", missing.display()),
        ),
        (
            vec!["--prompt-file".into(), binary.display().to_string()],
            "UTF-8".into(),
        ),
        (
            vec![
                "--prompt-file".into(),
                binary.display().to_string(),
                "--prompt".into(),
                "x".into(),
            ],
            "cannot be used with".into(),
        ),
    ];
    // A FIFO with no writer would block an open without O_NONBLOCK.
    let fifo = tmp.path().join("fifo");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        cases.push((
            vec!["--prompt-file".into(), fifo.display().to_string()],
            "not a regular file".into(),
        ));
    } else {
        eprintln!("skipping the FIFO case: mkfifo is not available");
    }
    for (args, needle) in cases {
        let mut all = vec!["generate", "--model", "/nonexistent-model"];
        all.extend(args.iter().map(String::as_str));
        let out = moe_core(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {err}");
        assert!(!err.contains("model directory"), "{args:?}: {err}");
    }
}

#[test]
fn a_prompt_past_the_trained_context_needs_context_length() {
    if !tokenizer_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("long.py");
    std::fs::write(&file, python(12)).expect("write");
    let model = model_dir("stdlib-moe-a");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "generate".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--prompt-file".into(),
            file.display().to_string(),
            "--max-new-tokens".into(),
            "2".into(),
            "--json".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = base(extra);
        moe_core(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Refused at the trained context, with the flag named.
    let out = run(&["--prompt-tokens", "300"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        // 300 positions for the prompt, one more for the second new token.
        err.contains("the prompt is 300 tokens") && err.contains("--context-length 301"),
        "{err}"
    );

    // Extended: it runs, and says so.
    let out = run(&["--prompt-tokens", "300", "--context-length", "320"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: context extended from the trained 256 positions to 320"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["data"];
    assert_eq!(d["prompt_tokens"], 300, "{d}");
    assert_eq!(d["new_tokens"], 2, "{d}");
    assert_eq!(d["context_length"], 320, "{d}");
    assert_eq!(d["trained_context"], 256, "{d}");
    assert_eq!(d["context_extended"], true, "{d}");
    assert_eq!(d["prompt_file"], file.display().to_string(), "{d}");
    // The prompt reported is the text of the 300 tokens run: a prefix of the file.
    let used = d["prompt"].as_str().expect("prompt");
    assert!(python(12).starts_with(used) && used.len() < python(12).len());

    // Still too long for the extension: raise it.
    let out = run(&["--context-length", "300"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("raise --context-length 300 to at least"),
        "{err}"
    );

    // At the trained context nothing is extended and nothing warns.
    let out = run(&["--prompt-tokens", "200", "--context-length", "256"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["data"]["context_extended"], false);

    for (extra, needle) in [
        (
            &["--context-length", "100"][..],
            "shorter than the model's trained context of 256",
        ),
        (
            &["--prompt-tokens", "5000", "--context-length", "6000"][..],
            "--prompt-tokens 5000: the prompt has only",
        ),
    ] {
        let out = run(extra);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn a_context_whose_state_does_not_fit_is_refused() {
    let dir = model_dir("stdlib-moe-a");
    let config = ModelConfig::load(&dir.join("config.json")).expect("config");
    let weights = Weights::load(&dir.join("model.safetensors"), &config).expect("weights");
    let model = Model::new(config, weights);
    // The state grows with positions^2 (the attention scores) and more.
    let (s4, s8) = (model.state_bytes(4096, 4096), model.state_bytes(8192, 8192));
    assert!(s8 > 2 * s4 && s4 > 64 << 20, "{s4} {s8}");
    // The state may take half the memory available.
    let e = ContextExtension::plan_within(&model, 4096, Some(2 * s4)).expect("fits exactly");
    assert!(e.extended() && e.state_bytes == s4, "{e:?}");
    let err = ContextExtension::plan_within(&model, 8192, Some(2 * s8 - 2))
        .expect_err("one byte short")
        .to_string();
    assert!(
        err.contains("context length 8192") && err.contains("available"),
        "{err}"
    );
    // A full MAX_POSITIONS context is 16 GiB of scores alone.
    let err = ContextExtension::plan_within(&model, 1 << 16, Some(24 << 30))
        .expect_err("too big")
        .to_string();
    assert!(err.contains("needs"), "{err}");
    let err = ContextExtension::plan_within(&model, (1 << 16) + 1, None)
        .expect_err("above MAX_POSITIONS")
        .to_string();
    assert!(err.contains("MAX_POSITIONS"), "{err}");
}
