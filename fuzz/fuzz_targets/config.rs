//! Fuzz target: arbitrary text through the configuration loader, as `p1gw check-config` and
//! `p1gw run` use it (parse, then validate). Checks, besides "no panic": every error names the
//! file, stays on one line, means exit 78 and, when it has a position, points inside the text;
//! a configuration that validates renders back to TOML that validates again.
//! Seeds: `config/*.toml` (scripts/fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p1gw::config::{ConfigError, parse_str};

/// No secrets come from the environment: the loader must not depend on it here.
fn no_env(_: &str) -> Option<String> {
    None
}

fn check(text: &str, errors: &[ConfigError]) {
    assert!(!errors.is_empty(), "an Err without errors");
    let lines = text.split('\n').count();
    for e in errors {
        let shown = e.to_string();
        assert!(shown.starts_with("fuzz.toml"), "{shown}");
        assert!(!shown.contains('\n'), "not one line: {shown:?}");
        assert_eq!(e.exit_code(), 78, "{shown}");
        if let Some(at) = e.location() {
            assert!(
                at.line >= 1 && at.line <= lines && at.column >= 1,
                "{shown} outside the {lines} lines of the text"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the loader reads files with read_to_string: never anything but UTF-8
    };
    let config = match parse_str("fuzz.toml", text.to_owned(), &no_env) {
        Ok(config) => config,
        Err(errors) => return check(text, &errors),
    };
    match config.validate() {
        Ok(_) => {
            let again = parse_str("fuzz.toml", config.to_toml(), &no_env).and_then(|c| c.validate());
            assert!(again.is_ok(), "rendered back, it does not validate: {:?}", again.err());
        }
        Err(errors) => check(text, &errors),
    }
});
