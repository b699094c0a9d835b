//! The compression table built from the real DeepSeek `tokenizer.json` must match the
//! published V' and SHA-256, and the `tokenizers` crate must encode the conformance texts
//! to the ids the reference produced with the Python library.
//!
//! The tokenizer is fetched by `scripts/fetch-tokenizer.sh`. Without it these tests print a
//! skip reason, unless `ENGRAM_REQUIRE_TOKENIZER=1` (set by CI), which makes absence a failure.

use std::path::PathBuf;

use engram_files::tokenizer;
use engram_kernels::CompressionTable;

fn deepseek() -> Option<tokenizer::LoadedTokenizer> {
    let path = tokenizer::for_tests().expect("ENGRAM_REQUIRE_TOKENIZER is set")?;
    let loaded = tokenizer::load(&path).expect("the cached tokenizer loads");
    if loaded.sha256 != tokenizer::DEEPSEEK_TOKENIZER_SHA256 {
        assert!(
            std::env::var_os(tokenizer::REQUIRE_TOKENIZER_ENV).is_none(),
            "{} is not the DeepSeek tokenizer (sha256 {})",
            path.display(),
            loaded.sha256
        );
        engram_kernels::skip::skipped(&format!("{} is not the DeepSeek tokenizer", path.display()));
        return None;
    }
    Some(loaded)
}

#[test]
fn compression_table_matches_published_fingerprint() {
    let Some(tok) = deepseek() else { return };
    let table = CompressionTable::from_tokenizer(&tok.tokenizer).expect("builds");
    assert_eq!(table.vocab_size(), 129_280);
    assert_eq!(table.compressed_vocab_size(), 99_092);
    assert_eq!(
        table.sha256_i32le(),
        "c60a86322ec17b4142bfef3c57a8d81fb428550cdf487f88a4320cb59fe46481"
    );
    assert_eq!(table.compress_id(2).expect("pad"), 2);
}

#[test]
fn encodes_conformance_texts_like_the_python_library() {
    let Some(tok) = deepseek() else { return };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/conformance/engram-hash-v1.json");
    let text = std::fs::read_to_string(path).expect("vectors present");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut checked = 0;
    for case in v["cases"].as_array().expect("cases") {
        let Some(text) = case["text"].as_str() else {
            continue;
        };
        let want: Vec<u32> = case["input_ids"][0]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect();
        let enc = tok.tokenizer.encode(text, false).expect("encodes");
        // The demo case prepends BOS (id 0) by hand.
        let got = enc.get_ids();
        let want = if want.len() == got.len() + 1 {
            &want[1..]
        } else {
            &want[..]
        };
        assert_eq!(got, want, "case {}", case["name"]);
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn tokenizer_that_is_not_json_is_an_error() {
    let dir = std::env::temp_dir().join(format!("engram-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, b"[1, 2").expect("writes");
    let err = tokenizer::load(&p).expect_err("not a tokenizer");
    assert!(
        err.to_string().contains("not a valid tokenizer.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
