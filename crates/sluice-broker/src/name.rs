//! Names of streams and consumer groups. They become directory and file names, so anything that
//! could reach outside the data directory, or mean something to a shell or a file system, is
//! refused.

use crate::error::{Error, Result};

/// Longest name allowed.
pub const NAME_LEN_MAX: usize = 128;

/// Checks a stream or consumer-group name: 1 to 128 characters of `[A-Za-z0-9_.-]`, and not `.`
/// or `..`.
pub fn validate(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > NAME_LEN_MAX {
        Some("longer than 128 characters")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only ASCII letters, digits, `_`, `.` and `-` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.chars().take(NAME_LEN_MAX + 8).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_names() {
        for ok in [
            "a",
            "orders",
            "Orders_2024.v1-x",
            "..a",
            "a..",
            &"x".repeat(128),
        ] {
            assert!(validate(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "a\\b",
            "a b",
            "naïve",
            "é",
            "tab\t",
            "nul\0",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate(bad), Err(Error::InvalidName { .. })),
                "{bad:?} must be refused"
            );
        }
    }
}
