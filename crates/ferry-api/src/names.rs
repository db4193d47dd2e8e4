//! Names of VMs and hosts: they end up in file paths, QEMU arguments and URLs, so they are
//! restricted to a safe alphabet instead of being escaped everywhere.

use crate::ApiError;

/// Longest accepted name. Unix socket paths (QMP) are limited to 108 bytes, and names appear
/// in them, so names stay short.
pub const MAX_NAME_LEN: usize = 48;

/// Checks a VM or host name: 1-48 characters of `a-z 0-9 - _ .`, starting with a letter or
/// digit. `what` names the thing in the error ("VM name", "host name").
pub fn validate_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "{what} '{name}' is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok {
        return Err(ApiError::bad_request(format!(
            "{what} '{name}' must start with a lowercase letter or a digit"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ApiError::bad_request(format!(
            "{what} '{name}' contains '{bad}'; use lowercase letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["web1", "db-primary", "a", "host_07.rack2", "0day"] {
            assert!(validate_name("VM name", n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_traversal_and_shell_characters() {
        for n in [
            "", "../etc", "a/b", "A", "-x", ".hidden", "a b", "x;rm", "é",
        ] {
            assert!(validate_name("VM name", n).is_err(), "{n:?}");
        }
        assert!(validate_name("VM name", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    proptest! {
        #[test]
        fn accepted_names_are_path_safe(name in "\\PC{0,60}") {
            if validate_name("VM name", &name).is_ok() {
                prop_assert!(!name.contains('/'));
                prop_assert!(!name.starts_with('.'));
                prop_assert!(name.len() <= MAX_NAME_LEN);
            }
        }
    }
}
